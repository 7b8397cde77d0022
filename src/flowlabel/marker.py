"""Load the classifier into the kernel and drive it.

This is the only module that calls the ``flowlabel._bpf`` extension. Importing
it works everywhere; creating a :class:`Program` fails with a clear
:class:`~flowlabel.errors.MarkerError` where the kernel side cannot run.
"""

from __future__ import annotations

import errno
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

from .errors import (
    MarkerError,
    MissingPrivilegeError,
    NoBTFError,
    NotSupportedError,
    ObjectError,
    VerifierError,
)

BTF_PATH = Path("/sys/kernel/btf/vmlinux")
PROGRAM_NAME = "marker_egress"
FLOW_MAP = "flows"
COUNTER_MAP = "counters"
CONFIG_VAR = "cfg"

#: Lines of the verifier log kept in a VerifierError's message.
VERIFIER_TAIL_LINES = 20


def _extension() -> tuple[Any, Any]:
    """The extension's ``ffi`` and ``lib``, or NotSupportedError off Linux."""
    if not sys.platform.startswith("linux"):
        raise NotSupportedError(
            f"the flow-label marker needs Linux with eBPF; this is {sys.platform}"
        )
    try:
        from . import _bpf  # type: ignore[attr-defined]
    except ImportError as exc:
        raise NotSupportedError(
            f"the flowlabel._bpf extension is missing ({exc}); install flowlabel from its wheel"
        ) from exc
    return _bpf.ffi, _bpf.lib


def libbpf_version() -> str:
    """The version of the libbpf linked into the extension."""
    ffi, lib = _extension()
    return str(ffi.string(lib.libbpf_version_string()).decode())


def bundled_object() -> Path:
    """The classifier object shipped inside the package."""
    return Path(str(resources.files(__package__).joinpath("marker.bpf.o")))


def counter_names() -> list[str]:
    """Counter names in map order, from marker.h's enum (``FLOWLABEL_CNT_SEEN`` -> ``seen``)."""
    _, lib = _extension()
    prefix = "FLOWLABEL_CNT_"
    found = {
        name[len(prefix):].lower(): getattr(lib, name)
        for name in dir(lib)
        if name.startswith(prefix) and name != prefix + "MAX"
    }
    return sorted(found, key=found.__getitem__)


class TestRun(NamedTuple):
    """The outcome of one BPF_PROG_TEST_RUN."""

    retval: int
    data: bytes
    duration_ns: int  # average per repetition, measured by the kernel


class ProgramInfo(NamedTuple):
    id: int
    jited_bytes: int
    xlated_bytes: int
    verified_insns: int


def _log_tail(text: str, lines: int = VERIFIER_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _errno_error(what: str, err: int) -> MarkerError:
    """Map a libbpf/kernel errno to the exception that explains it."""
    err = abs(err)
    if err in (errno.EPERM, errno.EACCES) and os.geteuid() != 0:
        return MissingPrivilegeError(
            f"{what}: permission denied; run as root or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"
        )
    if err == errno.EPERM:
        return MissingPrivilegeError(
            f"{what}: operation not permitted; the process needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"
        )
    return MarkerError(f"{what}: {os.strerror(err)} (errno {err})")


class Program:
    """One opened, configured and loaded copy of the classifier.

    ``path`` is a BPF object file (default: the one shipped in the package).
    ``debug`` and ``l3`` are written to the object's read-only configuration
    before load; ``max_flows`` sizes the flow map. ``tcx`` prepares the program
    for a TCX link (its expected attach type must be set before load).
    """

    def __init__(
        self,
        path: Union[str, os.PathLike[str], None] = None,
        *,
        debug: bool = False,
        l3: bool = False,
        max_flows: int = 131072,
        program: str = PROGRAM_NAME,
        tcx: bool = False,
    ) -> None:
        self._ffi, self._lib = _extension()
        self._obj: Any = self._ffi.NULL
        if not BTF_PATH.exists():
            raise NoBTFError(
                f"the kernel has no BTF ({BTF_PATH} is missing); use a kernel built with CONFIG_DEBUG_INFO_BTF=y"
            )
        self.path = Path(path) if path is not None else bundled_object()
        self._open()
        try:
            self._configure(debug=debug, l3=l3, max_flows=max_flows, program=program, tcx=tcx)
            self._load()
        except BaseException:
            self.close()
            raise
        self.debug = debug
        self.l3 = l3

    # -- set-up ---------------------------------------------------------------

    def _open(self) -> None:
        ffi, lib = self._ffi, self._lib
        if not self.path.is_file():
            raise ObjectError(f"BPF object {self.path} does not exist")
        try:
            with open(self.path, "rb") as f:
                magic = f.read(4)
        except OSError as exc:
            raise ObjectError(f"cannot read BPF object {self.path}: {exc.strerror}") from exc
        if magic != b"\x7fELF":
            raise ObjectError(f"{self.path} is not a BPF object (not an ELF file)")
        lib.fl_log_clear()
        obj = lib.bpf_object__open_file(os.fsencode(self.path), ffi.NULL)
        if obj == ffi.NULL:
            detail = _log_tail(ffi.string(lib.fl_log_text()).decode(errors="replace"), 3)
            raise ObjectError(f"{self.path} is not a usable BPF object: {detail or os.strerror(ffi.errno)}")
        self._obj = obj

    def _configure(self, *, debug: bool, l3: bool, max_flows: int, program: str, tcx: bool) -> None:
        ffi, lib = self._ffi, self._lib
        self._prog = lib.bpf_object__find_program_by_name(self._obj, program.encode())
        if self._prog == ffi.NULL:
            raise ObjectError(f"{self.path} has no program named {program!r}")
        if tcx:
            lib.bpf_program__set_expected_attach_type(self._prog, lib.BPF_TCX_EGRESS)
        self._flows = lib.bpf_object__find_map_by_name(self._obj, FLOW_MAP.encode())
        self._counters = lib.bpf_object__find_map_by_name(self._obj, COUNTER_MAP.encode())
        if self._flows != ffi.NULL:
            if not 1 <= max_flows <= 1 << 24:
                raise ValueError(f"max_flows must be between 1 and {1 << 24}, not {max_flows}")
            lib.bpf_map__set_max_entries(self._flows, max_flows)
        size = ffi.new("size_t *")
        ptr = lib.fl_rodata_var(self._obj, CONFIG_VAR.encode(), size)
        if ptr != ffi.NULL:
            cfg = ffi.new("struct marker_config *", {"debug": int(debug), "l3": int(l3)})
            ffi.memmove(ptr, cfg, min(size[0], ffi.sizeof("struct marker_config")))
        elif debug or l3:
            raise ObjectError(f"{self.path} has no {CONFIG_VAR!r} configuration to set debug or l3 in")

    def _load(self) -> None:
        ffi, lib = self._ffi, self._lib
        lib.fl_log_clear()
        err = lib.bpf_object__load(self._obj)
        if err:
            log = ffi.string(lib.fl_log_text()).decode(errors="replace")
            if abs(err) in (errno.EPERM,) or (abs(err) == errno.EACCES and "processed" not in log):
                raise _errno_error(f"loading {self.path.name}", err)
            raise VerifierError(
                f"the kernel rejected {self.path.name} ({os.strerror(abs(err))}); verifier log tail:\n"
                + _log_tail(log),
                log,
            )
        self.prog_fd = int(lib.bpf_program__fd(self._prog))
        self.map_fd = int(lib.bpf_map__fd(self._flows)) if self._flows != ffi.NULL else -1
        self.counters_fd = int(lib.bpf_map__fd(self._counters)) if self._counters != ffi.NULL else -1
        self._ncpus = int(lib.libbpf_num_possible_cpus())
        self._key = ffi.new("struct flow_key *")
        self._value = ffi.new("struct flow_value *")

    # -- facts ----------------------------------------------------------------

    @property
    def bpf_program(self) -> Any:
        """The libbpf ``struct bpf_program *`` (for attaching)."""
        return self._prog

    @property
    def max_flows(self) -> int:
        return int(self._lib.bpf_map__max_entries(self._flows))

    def info(self) -> ProgramInfo:
        ffi = self._ffi
        out = [ffi.new("uint32_t *") for _ in range(4)]
        err = self._lib.fl_prog_info(self.prog_fd, *out)
        if err:
            raise _errno_error("reading program info", err)
        return ProgramInfo(*(int(o[0]) for o in out))

    # -- running --------------------------------------------------------------

    def test_run(self, data: bytes, repeat: int = 1) -> TestRun:
        """Run the program on one packet with BPF_PROG_TEST_RUN."""
        ffi, lib = self._ffi, self._lib
        out = ffi.new("char[]", len(data) + 256)
        out_size = ffi.new("uint32_t *", len(data) + 256)
        retval = ffi.new("uint32_t *")
        duration = ffi.new("uint32_t *")
        err = lib.fl_test_run(self.prog_fd, data, len(data), out, out_size, repeat, retval, duration)
        if err:
            raise _errno_error("BPF_PROG_TEST_RUN", err)
        return TestRun(int(retval[0]), ffi.buffer(out, out_size[0])[:], int(duration[0]))

    # -- the flow map -----------------------------------------------------------

    def key(self, protocol: int, saddr: bytes, daddr: bytes, sport: int, dport: int) -> bytes:
        """Pack a ``struct flow_key`` (ports in host byte order, addresses 16 bytes)."""
        if len(saddr) != 16 or len(daddr) != 16:
            raise ValueError("flow keys hold 16-byte IPv6 addresses")
        k = self._key
        k.saddr = saddr
        k.daddr = daddr
        k.sport = int.from_bytes(sport.to_bytes(2, "big"), sys.byteorder)
        k.dport = int.from_bytes(dport.to_bytes(2, "big"), sys.byteorder)
        k.proto = protocol
        return bytes(self._ffi.buffer(k))

    def set_label(self, key: bytes, label: int) -> None:
        """Insert or replace the label of one flow key."""
        self._value.label = label
        err = self._lib.bpf_map_update_elem(self.map_fd, key, self._value, 0)
        if err:
            raise _errno_error("updating the flow map", err)

    def get_label(self, key: bytes) -> Optional[int]:
        err = self._lib.bpf_map_lookup_elem(self.map_fd, key, self._value)
        if err == -errno.ENOENT:
            return None
        if err:
            raise _errno_error("reading the flow map", err)
        return int(self._value.label)

    def delete(self, key: bytes) -> bool:
        """Remove one flow key; False if it was not there."""
        err = self._lib.bpf_map_delete_elem(self.map_fd, key)
        if err == -errno.ENOENT:
            return False
        if err:
            raise _errno_error("deleting from the flow map", err)
        return True

    # -- counters -------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """The classifier's counters, summed over CPUs."""
        ffi, lib = self._ffi, self._lib
        names = counter_names()
        per_cpu = ffi.new("uint64_t[]", self._ncpus * len(names))
        zero = ffi.new("uint32_t *", 0)
        err = lib.bpf_map_lookup_elem(self.counters_fd, zero, per_cpu)
        if err:
            raise _errno_error("reading the counters", err)
        totals = dict.fromkeys(names, 0)
        for cpu in range(self._ncpus):
            base = cpu * len(names)
            for i, name in enumerate(names):
                totals[name] += int(per_cpu[base + i])
        return totals

    def reset_counters(self) -> None:
        ffi, lib = self._ffi, self._lib
        per_cpu = ffi.new("uint64_t[]", self._ncpus * len(counter_names()))
        zero = ffi.new("uint32_t *", 0)
        err = lib.bpf_map_update_elem(self.counters_fd, zero, per_cpu, 0)
        if err:
            raise _errno_error("resetting the counters", err)

    # -- lifetime -------------------------------------------------------------

    def close(self) -> None:
        """Unload: the kernel frees the program once nothing else holds it. Idempotent."""
        if self._obj != self._ffi.NULL:
            self._lib.bpf_object__close(self._obj)
            self._obj = self._ffi.NULL

    def __enter__(self) -> Program:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
