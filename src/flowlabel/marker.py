"""Load the classifier into the kernel and drive it.

This is the only module that calls the ``flowlabel._bpf`` extension. Importing
it works everywhere; creating a :class:`Program` fails with a clear
:class:`~flowlabel.errors.MarkerError` where the kernel side cannot run.
"""

from __future__ import annotations

import atexit
import errno
import logging
import mmap
import os
import resource
import socket
import struct
import sys
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, NamedTuple, Union

from .errors import (
    AttachConflictError,
    InterfaceError,
    MapFullError,
    MarkerError,
    MissingPrivilegeError,
    NotSupportedError,
    ObjectError,
    VerifierError,
)
from .flow import Flow
from .netif import clsact_has_filters, egress_filter_program

log = logging.getLogger(__name__)

PROGRAM_NAME = "marker_egress"
FLOW_MAP = "flows"
COUNTER_MAP = "counters"
FILTER_MAP = "filter"
GENERATION_MAP = "generation"
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
        from . import _bpf  # type: ignore[attr-defined,unused-ignore]
    except ImportError as exc:
        raise NotSupportedError(
            f"the flowlabel._bpf extension is missing ({exc}); install flowlabel from its wheel"
        ) from exc
    return _bpf.ffi, _bpf.lib


def libbpf_version() -> str:
    """The version of the libbpf linked into the extension."""
    ffi, lib = _extension()
    return str(ffi.string(lib.libbpf_version_string()).decode())


class KernelFeatures(NamedTuple):
    """What the running kernel offers, each probed by asking it (needs CAP_BPF)."""

    mmapable_array: int  # 0, or the errno (negative) that creating or mapping one gave
    batch_ops: int  # 0, or the errno (negative) that a batched lookup gave
    tcx: bool
    memlock_charged: bool  # BPF memory counts against RLIMIT_MEMLOCK (before Linux 5.11)


def kernel_features() -> KernelFeatures:
    ffi, lib = _extension()
    ids = ffi.new("uint32_t[]", 1)
    count = ffi.new("uint32_t *", 1)
    # A kernel without TCX does not know the attach type and answers EINVAL.
    tcx = lib.fl_tcx_progs(socket.if_nametoindex("lo"), ids, count) != -errno.EINVAL
    return KernelFeatures(int(lib.fl_probe_mmapable_array()), int(lib.fl_probe_batch_ops()), tcx,
                          lib.fl_probe_memlock_charged() == 1)


def raise_memlock_limit() -> None:
    """Lift the soft locked-memory limit to the hard one, which needs no privilege.

    Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; libbpf raises it only
    when the hard limit allows "unlimited".
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))


def memlock_limit() -> str:
    """The process's soft locked-memory limit, in words."""
    limit = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    if limit == resource.RLIM_INFINITY:
        return "unlimited"
    return f"{limit // 1024} KiB" if limit < 1 << 20 else f"{limit / (1 << 20):.0f} MiB"


def memlock_advice() -> str:
    """What to do when a kernel that charges BPF memory to RLIMIT_MEMLOCK refused a map."""
    return (f"this kernel charges BPF memory to the locked-memory limit (RLIMIT_MEMLOCK, {memlock_limit()}): "
            "set LimitMEMLOCK=infinity in the service unit, or run `ulimit -l unlimited` first")


def bundled_object() -> Path:
    """The classifier object shipped inside the package."""
    from importlib import resources

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


def _verifier_reason(log: str) -> str:
    """The verifier's own verdict: the line just before its ``processed N insns`` summary."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("processed ") and " insns" in line and i > 0:
            return lines[i - 1]
    return next((line for line in reversed(lines) if not line.startswith("libbpf:")), "")


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


def default_filter_bits(max_flows: int, lib: Any) -> int:
    """Presence-filter size for a flow map of ``max_flows``: a power of two (marker.h)."""
    wanted = max_flows * lib.FLOWLABEL_FILTER_BITS_PER_FLOW
    bits = 1 << max(wanted - 1, 1).bit_length()
    return int(min(max(bits, lib.FLOWLABEL_FILTER_MIN_BITS), lib.FLOWLABEL_FILTER_MAX_BITS))


class _FlowFilter:
    """User space's half of the presence filter and of the cache generation.

    Several flows can share a filter slot, so a count per slot says how many
    map entries use it: its bit is set before the first one is inserted and
    cleared after the last one is deleted. A count that reaches 255 sticks
    (its bit then stays set until :meth:`reset`, which only costs lookups).
    Bits and the generation are written through mmaps of the maps, without a
    system call. Programs sharing a flow map share one of these.
    """

    def __init__(self, lib: Any, filter_fd: int, bits: int, generation_fd: int) -> None:
        page = mmap.PAGESIZE
        self.bits = bits
        self._hash = lib.flowlabel_filter_hash
        self._mask = bits - 1
        self._map = mmap.mmap(filter_fd, -(-bits // 8 // page) * page, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE)
        self._counts = bytearray(bits)
        self._gen_map = mmap.mmap(generation_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._generation = memoryview(self._gen_map).cast("Q")

    def slot(self, key: bytes) -> int:
        return int(self._hash(key)) & self._mask

    def has(self, slot: int) -> bool:
        return bool(self._map[slot >> 3] >> (slot & 7) & 1)

    def before_insert(self, key: bytes) -> int:
        """Set the key's bit (before the map entry exists); returns its slot."""
        slot: int = self._hash(key) & self._mask
        if not self._counts[slot]:
            self._map[slot >> 3] |= 1 << (slot & 7)
        return slot

    def inserted(self, slot: int) -> None:
        count = self._counts[slot]
        if count < 255:
            self._counts[slot] = count + 1

    def not_inserted(self, slot: int) -> None:
        """The insert after :meth:`before_insert` failed."""
        if not self._counts[slot]:
            self._map[slot >> 3] &= ~(1 << (slot & 7)) & 0xFF

    def deleted(self, key: bytes) -> None:
        """A map entry of ``key`` is gone: clear its bit if it was the slot's last."""
        slot: int = self._hash(key) & self._mask
        count = self._counts[slot]
        if count == 1:
            self._counts[slot] = 0
            self._map[slot >> 3] &= ~(1 << (slot & 7)) & 0xFF
        elif 1 < count < 255:
            self._counts[slot] = count - 1

    def bump(self) -> None:
        """Invalidate the classifier's cached labels: after a change or removal."""
        self._generation[0] += 1

    @property
    def generation(self) -> int:
        return int(self._generation[0])

    def reset(self) -> None:
        """The map was emptied: every bit and count to zero, then a bump."""
        self._counts = bytearray(self.bits)
        self._map[:] = bytes(len(self._map))
        self.bump()


class Program:
    """One opened, configured and loaded copy of the classifier.

    ``path`` is a BPF object file (default: the one shipped in the package).
    ``debug`` and ``l3`` are written to the object's read-only configuration
    before load; ``max_flows`` sizes the flow map. ``tcx`` prepares the program
    for a TCX link (its expected attach type must be set before load).
    ``share_flows_with`` makes this copy use another one's flow map, so that
    programs for devices with and without a link-layer header see the same flows
    (and its presence filter and cache generation with it). ``filter_bits`` sizes
    the presence filter (a power of two; default: from ``max_flows``).
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
        share_flows_with: Program | None = None,
        filter_bits: int | None = None,
    ) -> None:
        self._ffi, self._lib = _extension()
        self._obj: Any = self._ffi.NULL
        self._filter: _FlowFilter | None = None
        self.path = Path(path) if path is not None else bundled_object()
        self._open()
        try:
            if share_flows_with is not None and share_flows_with._filter is not None:
                filter_bits = share_flows_with._filter.bits
            self._configure(debug=debug, l3=l3, max_flows=max_flows, program=program, tcx=tcx,
                            filter_bits=filter_bits)
            if share_flows_with is not None:
                self._share_maps(share_flows_with)
            self._load()
        except BaseException:
            self.close()
            raise
        self.debug = debug
        self.l3 = l3
        self.program_name = program

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

    def _configure(self, *, debug: bool, l3: bool, max_flows: int, program: str, tcx: bool,
                   filter_bits: int | None) -> None:
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
        self._filter_map = lib.bpf_object__find_map_by_name(self._obj, FILTER_MAP.encode())
        self._generation_map = lib.bpf_object__find_map_by_name(self._obj, GENERATION_MAP.encode())
        filter_mask = 0
        if self._filter_map != ffi.NULL and self._generation_map != ffi.NULL:
            bits = default_filter_bits(max_flows, lib) if filter_bits is None else filter_bits
            low, high = lib.FLOWLABEL_FILTER_MIN_BITS, lib.FLOWLABEL_FILTER_MAX_BITS
            if bits & (bits - 1) or not low <= bits <= high:
                raise ValueError(f"filter_bits must be a power of two from {low} to {high}, not {bits}")
            lib.bpf_map__set_max_entries(self._filter_map, bits // 64)
            filter_mask = bits - 1
        else:
            self._filter_map = ffi.NULL
        size = ffi.new("size_t *")
        ptr = lib.fl_rodata_var(self._obj, CONFIG_VAR.encode(), size)
        if ptr != ffi.NULL:
            cfg = ffi.new("struct marker_config *",
                          {"debug": int(debug), "l3": int(l3), "filter_mask": filter_mask})
            ffi.memmove(ptr, cfg, min(size[0], ffi.sizeof("struct marker_config")))
        elif debug or l3:
            raise ObjectError(f"{self.path} has no {CONFIG_VAR!r} configuration to set debug or l3 in")

    def _share_maps(self, other: Program) -> None:
        """Use the other program's flow map, and its filter and generation with it."""
        lib = self._lib
        err = lib.bpf_map__reuse_fd(self._flows, other.map_fd)
        if err:
            raise _errno_error("sharing the flow map", err)
        if (self._filter_map != self._ffi.NULL) != (other._filter is not None):
            raise ObjectError(f"{self.path} and {other.path} differ in having a presence filter")
        if other._filter is not None:
            for ours, theirs in ((self._filter_map, other._filter_map),
                                 (self._generation_map, other._generation_map)):
                err = lib.bpf_map__reuse_fd(ours, lib.bpf_map__fd(theirs))
                if err:
                    raise _errno_error("sharing the presence filter", err)
            self._filter = other._filter

    def _load(self) -> None:
        ffi, lib = self._ffi, self._lib
        raise_memlock_limit()
        lib.fl_log_clear()
        err = lib.bpf_object__load(self._obj)
        if err:
            text = ffi.string(lib.fl_log_text()).decode(errors="replace")
            if abs(err) == errno.EPERM and lib.fl_probe_memlock_charged() == 1:
                raise MissingPrivilegeError(
                    f"loading {self.path.name}: operation not permitted; {memlock_advice()}")
            if abs(err) in (errno.EPERM,) or (abs(err) == errno.EACCES and "processed" not in text):
                raise _errno_error(f"loading {self.path.name}", err)
            raise VerifierError(
                f"the kernel's verifier rejected {self.path.name} ({os.strerror(abs(err))}); "
                "the end of its log:\n"
                + _log_tail(text),
                text,
                _verifier_reason(text),
            )
        self.prog_fd = int(lib.bpf_program__fd(self._prog))
        self.map_fd = int(lib.bpf_map__fd(self._flows)) if self._flows != ffi.NULL else -1
        self.counters_fd = int(lib.bpf_map__fd(self._counters)) if self._counters != ffi.NULL else -1
        self._ncpus = int(lib.libbpf_num_possible_cpus())
        self._pack_key = key_packer(ffi)
        self._value = ffi.new("struct flow_value *")
        if self._filter is None and self._filter_map != ffi.NULL:
            self._filter = _FlowFilter(lib, int(lib.bpf_map__fd(self._filter_map)),
                                       int(lib.bpf_map__max_entries(self._filter_map)) * 64,
                                       int(lib.bpf_map__fd(self._generation_map)))

    # -- facts ----------------------------------------------------------------

    @property
    def bpf_program(self) -> Any:
        """The libbpf ``struct bpf_program *`` (for attaching)."""
        return self._prog

    @property
    def max_flows(self) -> int:
        return int(self._lib.bpf_map__max_entries(self._flows))

    @property
    def filter_bits(self) -> int:
        """Slots of the presence filter; 0 if the object has none."""
        return self._filter.bits if self._filter is not None else 0

    def filter_slot(self, key: bytes) -> int:
        """The filter slot of a packed key (the classifier's own hash)."""
        if self._filter is None:
            raise ObjectError(f"{self.path} has no presence filter")
        return self._filter.slot(key)

    def filter_has(self, slot: int) -> bool:
        """Whether a filter slot's bit is set: packets whose key hashes there are looked up."""
        if self._filter is None:
            raise ObjectError(f"{self.path} has no presence filter")
        return self._filter.has(slot)

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
        return self._pack_key(saddr, daddr, sport, dport, protocol)

    def set_label(self, key: bytes, label: int) -> None:
        """Insert or replace the label of one flow key."""
        lib, filt = self._lib, self._filter
        self._value.label = label
        if filt is None:
            err = lib.bpf_map_update_elem(self.map_fd, key, self._value, lib.BPF_ANY)
            if err:
                raise _errno_error("updating the flow map", err)
            return
        slot = filt.before_insert(key)
        err = lib.bpf_map_update_elem(self.map_fd, key, self._value, lib.BPF_NOEXIST)
        if err == 0:
            filt.inserted(slot)
            return
        if err == -errno.EEXIST:
            err = lib.bpf_map_update_elem(self.map_fd, key, self._value, lib.BPF_EXIST)
            filt.bump()
        if err:
            filt.not_inserted(slot)
            raise _errno_error("updating the flow map", err)

    def get_label(self, key: bytes) -> int | None:
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
        if self._filter is not None:
            self._filter.deleted(key)
            self._filter.bump()
        return True

    # -- counters -------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """The classifier's counters, summed over CPUs.

        The classifier counts each packet once, in the counter of its outcome;
        ``seen`` and ``ipv6`` are the sums marker.h defines them to be.
        """
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
        if "ipv6" in totals and "seen" in totals:
            totals["ipv6"] = totals["marked"] + totals["missed"] + totals["unparsed"]
            totals["seen"] = totals["ipv6"] + totals["non_ipv6"]
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
        self._filter = None  # its mmaps go with the last program that shares it
        if self._obj != self._ffi.NULL:
            self._lib.bpf_object__close(self._obj)
            self._obj = self._ffi.NULL

    def __enter__(self) -> Program:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with suppress(Exception):
            self.close()


# -- attaching to interfaces and managing flows ----------------------------------

ATTACH_MODES = ("auto", "tcx", "tc")
#: The cls_bpf filter's handle and priority on the clsact egress hook.
TC_HANDLE = 0x5C17
TC_PRIORITY = 0x5C17
#: Where per-interface locks live; a lock dies with its process.
LOCK_DIR = Path(os.environ.get("FLOWLABEL_LOCK_DIR", "/run/flowlabel/locks"))
#: Seconds a read of the host's addresses is trusted when a flow has no local end.
LOCAL_ADDRESS_TTL = 2.0
#: Kernels from this release on attach TC programs with TCX links.
TCX_KERNEL = (6, 6)

_PROTO_NUMBERS = {"tcp": 6, "udp": 17}
_PROTO_NAMES = {v: k for k, v in _PROTO_NUMBERS.items()}
# The kernel's LRU map may evict before it is full (its free nodes are spread
# over CPUs, and an update takes a fresh node even for an existing key), so it
# is sized above the capacity the Marker enforces.
_LRU_SLACK_MIN = 1024


def key_packer(ffi: Any) -> Callable[[bytes, bytes, int, int, int], bytes]:
    """A fast packer of ``struct flow_key`` (saddr, daddr, sport, dport, proto).

    Its format is derived from the layout cffi read from bpf/marker.h, so it
    follows that header; ports are in network byte order, padding is zero.
    """
    fields = {"saddr": "16s", "daddr": "16s", "sport": "H", "dport": "H", "proto": "B"}
    fmt, pos = ">", 0
    for name in sorted(fields, key=lambda n: ffi.offsetof("struct flow_key", n)):
        offset = ffi.offsetof("struct flow_key", name)
        fmt += f"{offset - pos}x" * (offset > pos) + fields[name]
        pos = offset + struct.calcsize(">" + fields[name])
    size = ffi.sizeof("struct flow_key")
    fmt += f"{size - pos}x" * (size > pos)
    packer = struct.Struct(fmt)
    if packer.size != size:
        raise ObjectError(f"struct flow_key has fields this module does not know ({size} bytes)")
    return packer.pack


def _kernel_release() -> tuple[int, int]:
    import platform

    parts = platform.release().split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def _netns_id() -> str:
    try:
        return str(os.stat("/proc/thread-self/ns/net").st_ino)
    except OSError:
        return "0"


class _NetnsHome:
    """The network namespace a Marker was made in, to return to for netlink work.

    Interface names, indexes and addresses are per namespace, and a thread can
    change namespace; the Marker's own interface and address look-ups always
    happen in its home namespace.
    """

    def __init__(self) -> None:
        self.fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.inode = os.fstat(self.fd).st_ino

    @contextmanager
    def entered(self) -> Iterator[None]:
        if os.stat("/proc/thread-self/ns/net").st_ino == self.inode:
            yield
            return
        from .netif import enter_netns

        current = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            enter_netns(self.fd)
            try:
                yield
            finally:
                enter_netns(current)
        finally:
            os.close(current)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1



class _InterfaceLock:
    """An flock per (network namespace, interface): one Marker per interface at a time."""

    def __init__(self, ifname: str) -> None:
        import fcntl

        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        self.path = LOCK_DIR / f"{_netns_id()}-{ifname}.lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise AttachConflictError(
                f"another flowlabel marker is attached to {ifname!r}; close it first "
                "(one marker per interface)"
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Attachment:
    """The classifier on one interface's egress, as a TCX link or a cls_bpf filter."""

    def __init__(self, marker: Marker, link: Any, program: Program, mode: str, remove_qdisc: bool) -> None:
        self.name = link.name
        self.ifindex = link.ifindex
        self._lib, self._ffi = marker._lib, marker._ffi
        self._lock = _InterfaceLock(link.name)
        self._link: Any = self._ffi.NULL
        self.created_qdisc = False
        self._remove_qdisc = remove_qdisc
        try:
            if mode in ("auto", "tcx") and self._attach_tcx(program, required=mode == "tcx"):
                self.mode = "tcx"
            else:
                self._attach_tc(program)
                self.mode = "tc"
        except BaseException:
            self._lock.release()
            raise

    def _attach_tcx(self, program: Program, *, required: bool) -> bool:
        ffi, lib = self._ffi, self._lib
        on_egress = tcx_programs(self.ifindex)
        if any(name == program.program_name[:15] for _, name in on_egress):
            raise AttachConflictError(
                f"a TCX link of another {program.program_name} program is already on {self.name!r} egress; "
                "is a marker running in another mount namespace?"
            )
        unnamed = [str(prog_id) for prog_id, name in on_egress if name is None]
        if unnamed:
            log.warning("cannot tell whether TCX programs %s on %s egress include another marker: "
                        "reading a program's name needs CAP_SYS_ADMIN", ", ".join(unnamed), self.name)
        lib.fl_log_clear()
        link = lib.bpf_program__attach_tcx(program.bpf_program, self.ifindex, ffi.NULL)
        if link != ffi.NULL:
            self._link = link
            return True
        err = ffi.errno
        if err == errno.ENODEV:
            raise InterfaceError(f"network interface {self.name!r} disappeared while attaching")
        if required or err in (errno.EPERM, errno.EACCES):
            raise _errno_error(f"attaching a TCX link to {self.name!r}", err)
        return False  # this kernel has no TCX: fall back to clsact

    def _attach_tc(self, program: Program) -> None:
        lib = self._lib
        created = lib.fl_tc_hook_create(self.ifindex)
        if created < 0:
            raise _errno_error(f"creating the clsact qdisc on {self.name!r}", created)
        self.created_qdisc = created == 1
        # The filter dump names the program at our handle and priority; reading a
        # program by its id instead would need CAP_SYS_ADMIN, which the unit does not grant.
        found = egress_filter_program(self.ifindex, TC_HANDLE, TC_PRIORITY)
        if found is not None and found != program.program_name[:15]:
            raise AttachConflictError(
                f"a filter of another program ({found or 'unnamed'}) sits at handle {TC_HANDLE:#x} "
                f"priority {TC_PRIORITY:#x} on {self.name!r} egress; remove it or use attach mode 'tcx'"
            )
        # Under our lock, a filter of ours can only be left by a marker whose process died.
        err = lib.fl_tc_attach(self.ifindex, program.prog_fd, TC_HANDLE, TC_PRIORITY, int(found is not None))
        if err:
            raise _errno_error(f"attaching a cls_bpf filter to {self.name!r}", err)

    def detach(self) -> None:
        """Leave the interface as it was found. Safe to call twice; a vanished interface is fine."""

        try:
            if self._link != self._ffi.NULL:
                self._lib.bpf_link__destroy(self._link)
                self._link = self._ffi.NULL
            elif self.mode == "tc":
                self.mode = "detached"
                err = self._lib.fl_tc_detach(self.ifindex, TC_HANDLE, TC_PRIORITY)
                if err and abs(err) not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                    raise _errno_error(f"detaching from {self.name!r}", err)
                if self.created_qdisc and self._remove_qdisc and not clsact_has_filters(self.ifindex):
                    self._lib.fl_tc_hook_destroy(self.ifindex)
        finally:
            self._lock.release()


def tcx_programs(ifindex: int) -> list[tuple[int, str | None]]:
    """(id, name) of the programs on an interface's TCX egress; [] on a kernel without TCX.

    A name is None where it cannot be read: that needs CAP_SYS_ADMIN.
    """
    ffi, lib = _extension()
    ids = ffi.new("uint32_t[]", 64)
    count = ffi.new("uint32_t *", 64)
    err = lib.fl_tcx_progs(ifindex, ids, count)
    if err == -errno.EINVAL:
        return []  # no TCX on this kernel
    if err == -errno.ENODEV:
        raise InterfaceError(f"network interface {ifindex} does not exist")
    if err:
        raise _errno_error(f"listing the TCX programs of interface {ifindex}", err)
    found: list[tuple[int, str | None]] = []
    name = ffi.new("char[]", 64)
    for i in range(count[0]):
        err = lib.fl_prog_name(ids[i], name, 64)
        if err in (-errno.EPERM, -errno.EACCES):
            found.append((int(ids[i]), None))
        elif err == 0:
            found.append((int(ids[i]), ffi.string(name).decode()))
        elif err != -errno.ENOENT:  # ENOENT: detached meanwhile
            raise _errno_error(f"reading the name of program {ids[i]}", err)
    return found


def tcx_program_names(ifindex: int) -> list[str]:
    """Names of the programs on an interface's TCX egress (those that can be read)."""
    return [name for _, name in tcx_programs(ifindex) if name is not None]


class Marker:
    """The classifier attached to the egress of interfaces, and its flows.

    ``with Marker(["eth0"]) as m: m.add(flow, label)`` marks every packet of
    ``flow`` leaving eth0 with ``label`` until the flow is removed or the Marker
    closes. ``attach`` is ``"tcx"`` (a TCX link, kernel 6.6+), ``"tc"`` (a clsact
    qdisc with a direct-action cls_bpf filter) or ``"auto"``. ``remove_qdisc``
    deletes on close a clsact qdisc this Marker created (never one that was there
    before, nor one that others have put filters on since).

    One Marker per interface: a second one on the same interface raises
    AttachConflictError until the first closes (or its process dies).
    """

    def __init__(
        self,
        interfaces: Iterable[str] = ("lo",),
        *,
        attach: str = "auto",
        remove_qdisc: bool = False,
        program_path: Union[str, os.PathLike[str], None] = None,
        debug: bool = False,
        max_flows: int = 131072,
    ) -> None:
        if attach not in ATTACH_MODES:
            raise ValueError(f"attach mode must be one of {', '.join(ATTACH_MODES)}, not {attach!r}")
        if not 1 <= max_flows <= 1 << 24:
            raise ValueError(f"max_flows must be between 1 and {1 << 24}, not {max_flows}")
        self._ffi, self._lib = _extension()
        self.attach_mode = attach
        self.max_flows = max_flows
        self._remove_qdisc = remove_qdisc
        self._program_path = program_path
        self._debug = debug
        self._tcx = attach == "tcx" or (attach == "auto" and _kernel_release() >= TCX_KERNEL)
        self._programs: dict[bool, Program] = {}  # by l3
        self._filter: _FlowFilter | None = None  # the programs' shared presence filter
        self._attachments: dict[str, _Attachment] = {}
        self._count = 0
        self._local: frozenset[bytes] = frozenset()  # packed addresses
        self._local_read = 0.0
        self._closed = False
        self._home = _NetnsHome()
        try:
            for name in dict.fromkeys(interfaces):
                self.attach(name)
        except BaseException:
            self.close()
            raise
        _open_markers.add(self)

    # -- programs and interfaces ----------------------------------------------

    def _program(self, l3: bool) -> Program:
        prog = self._programs.get(l3)
        if prog is None:
            other = next(iter(self._programs.values()), None)
            capacity = self.max_flows + max(_LRU_SLACK_MIN, self.max_flows // 4)
            prog = Program(self._program_path, debug=self._debug, l3=l3, max_flows=capacity,
                           tcx=self._tcx, share_flows_with=other)
            self._programs[l3] = prog
            if other is None:
                self._bind_map(prog)
        return prog

    def _bind_map(self, prog: Program) -> None:
        ffi = self._ffi
        self._fd = prog.map_fd
        self._filter = prog._filter
        self._pack_key = key_packer(ffi)
        self._value = ffi.new("struct flow_value *")

    @property
    def interfaces(self) -> list[str]:
        return list(self._attachments)

    def attachment_modes(self) -> dict[str, str]:
        """How the classifier sits on each interface: ``"tcx"`` or ``"tc"``."""
        return {name: a.mode for name, a in self._attachments.items()}

    def attach(self, ifname: str) -> None:
        """Attach to one more interface's egress (again, if it went away and came back)."""
        from .netif import link

        self._check_open()
        with self._home.entered():
            old = self._attachments.pop(ifname, None)
            if old is not None:
                old.detach()
            found = link(ifname)
            self._attachments[ifname] = _Attachment(self, found, self._program(found.l3),
                                                    self.attach_mode, self._remove_qdisc)

    def detach(self, ifname: str) -> None:
        """Take the classifier off one interface; flows stay in the map."""
        att = self._attachments.pop(ifname, None)
        if att is None:
            raise InterfaceError(f"the marker is not attached to {ifname!r}")
        with self._home.entered():
            att.detach()

    # -- flows ----------------------------------------------------------------

    def _refresh_local_addresses(self) -> None:
        """Re-read the host's addresses, at most every couple of seconds."""
        import time

        from .netif import local_addresses

        now = time.monotonic()
        if not self._local_read or now - self._local_read > LOCAL_ADDRESS_TTL:
            with self._home.entered():
                self._local = frozenset(addr.packed for addr in local_addresses())
            self._local_read = now

    def _oriented_keys(self, flow: Flow) -> tuple[bytes, ...]:
        """Map keys of the flow as it leaves this host; both ways if neither end is local."""
        src, dst = flow.src.packed, flow.dst.packed
        if len(src) != 16:
            raise ValueError(f"IPv4 flows have no flow label: {flow}")
        proto = _PROTO_NUMBERS[flow.protocol]
        pack = self._pack_key
        for attempt in range(2):
            if src in self._local:
                return (pack(src, dst, flow.sport, flow.dport, proto),)
            if dst in self._local:
                return (pack(dst, src, flow.dport, flow.sport, proto),)
            if attempt == 0:
                self._refresh_local_addresses()
        return (pack(src, dst, flow.sport, flow.dport, proto), pack(dst, src, flow.dport, flow.sport, proto))

    def add(self, flow: Flow, label: int) -> None:
        """Mark the flow's packets with ``label`` (20 bits); replaces an earlier label."""
        if self._closed:
            self._check_open()
        if not 0 <= label <= 0xFFFFF:
            raise ValueError(f"a flow label has 20 bits: {label:#x} is out of range")
        lib, fd, value, filt = self._lib, self._fd, self._value, self._filter
        value.label = label
        for key in self._oriented_keys(flow):
            # The filter bit goes up before the entry exists, so no packet of the flow is missed.
            slot = filt.before_insert(key) if filt is not None else 0
            if self._count < self.max_flows:
                err = lib.bpf_map_update_elem(fd, key, value, lib.BPF_NOEXIST)
                if err == 0:
                    self._count += 1
                    if filt is not None:
                        filt.inserted(slot)
                    continue
                if err != -errno.EEXIST:
                    if filt is not None:
                        filt.not_inserted(slot)
                    raise _errno_error("adding a flow", err)
            err = lib.bpf_map_update_elem(fd, key, value, lib.BPF_EXIST)
            if filt is not None:
                if err:
                    filt.not_inserted(slot)
                else:
                    filt.bump()  # a cached copy of the old label is stale now
            if err == -errno.ENOENT:
                raise MapFullError(f"the flow map is full ({self.max_flows} flows); cannot add {flow}")
            if err:
                raise _errno_error("updating a flow", err)

    def add_many(self, items: Iterable[tuple[Flow, int]]) -> int:
        """Add many flows with batched map updates; returns how many map entries were written."""
        self._check_open()
        pending: list[tuple[bytes, int]] = []
        for flow, label in items:
            if not 0 <= label <= 0xFFFFF:
                raise ValueError(f"a flow label has 20 bits: {label:#x} is out of range")
            pending.extend((key, label) for key in self._oriented_keys(flow))
        if not pending:
            return 0
        ffi, lib, filt = self._ffi, self._lib, self._filter
        # New keys count against the capacity; find them first.
        is_new = [lib.bpf_map_lookup_elem(self._fd, key, self._value) == -errno.ENOENT for key, _ in pending]
        new = sum(is_new)
        if self._count + new > self.max_flows:
            raise MapFullError(
                f"the flow map is full: {self._count} of {self.max_flows} flows in use, {new} more asked for"
            )
        keys = ffi.new("struct flow_key[]", len(pending))
        values = ffi.new("struct flow_value[]", len(pending))
        ffi.memmove(keys, b"".join(key for key, _ in pending), ffi.sizeof(keys))
        for i, (_, label) in enumerate(pending):
            values[i].label = label
        slots = [filt.before_insert(key) for key, _ in pending] if filt is not None else []
        count = ffi.new("uint32_t *", len(pending))
        err = lib.bpf_map_update_batch(self._fd, keys, values, count, ffi.NULL)
        # On an error, the first count[0] entries were written: those are in the map.
        done = len(pending) if not err else min(int(count[0]), len(pending))
        if filt is not None:
            for i, slot in enumerate(slots):
                if i < done and is_new[i]:
                    filt.inserted(slot)
                elif i >= done:
                    filt.not_inserted(slot)
            if new < done:
                filt.bump()  # some labels were replaced
        self._count += sum(is_new[:done])
        if err:
            raise _errno_error("adding flows in a batch", err)
        return int(count[0])

    def remove(self, flow: Flow) -> bool:
        """Stop marking the flow; False if it was not marked."""
        if self._closed:
            self._check_open()
        removed = False
        filt = self._filter
        for key in self._oriented_keys(flow):
            err = self._lib.bpf_map_delete_elem(self._fd, key)
            if err == 0:
                self._count -= 1
                removed = True
                if filt is not None:
                    filt.deleted(key)  # the bit goes down only after the entry is gone
                    filt.bump()
            elif err != -errno.ENOENT:
                raise _errno_error("removing a flow", err)
        return removed

    def get(self, flow: Flow) -> int | None:
        """The label the flow's packets get, or None."""
        self._check_open()
        for key in self._oriented_keys(flow):
            err = self._lib.bpf_map_lookup_elem(self._fd, key, self._value)
            if err == 0:
                return int(self._value.label)
            if err != -errno.ENOENT:
                raise _errno_error("reading a flow", err)
        return None

    def _batches(self, batch: int = 4096) -> Iterator[tuple[Any, Any, int]]:
        """The kernel map's entries, read with batched lookups: (keys, values, count) per batch.

        The arrays are reused from one batch to the next; copy what must outlive it.
        """
        ffi, lib = self._ffi, self._lib
        keys = ffi.new("struct flow_key[]", batch)
        values = ffi.new("struct flow_value[]", batch)
        # A hash map's batch cursor is a bucket number; a key's size is room enough.
        cursor_in = ffi.new("char[]", ffi.sizeof("struct flow_key"))
        cursor_out = ffi.new("char[]", ffi.sizeof("struct flow_key"))
        count = ffi.new("uint32_t *")
        start: Any = ffi.NULL
        while True:
            count[0] = batch
            err = lib.bpf_map_lookup_batch(self._fd, start, cursor_out, keys, values, count, ffi.NULL)
            if err and err != -errno.ENOENT:
                raise _errno_error("reading the flow map", err)
            yield keys, values, int(count[0])
            if err:
                return
            ffi.memmove(cursor_in, cursor_out, ffi.sizeof(cursor_in))
            start = cursor_in

    def _entries(self) -> list[tuple[bytes, int]]:
        """Every (packed key, label) the kernel map holds."""
        ffi, size = self._ffi, self._ffi.sizeof("struct flow_key")
        out: list[tuple[bytes, int]] = []
        for keys, values, n in self._batches():
            raw = ffi.buffer(keys, n * size)[:]
            out.extend((raw[i * size:(i + 1) * size], int(values[i].label)) for i in range(n))
        return out

    def __iter__(self) -> Iterator[tuple[Flow, int]]:
        """The map's entries as (flow in egress orientation, label)."""
        self._check_open()
        for raw, label in self._entries():
            yield _flow_of(raw), label

    def map_entries(self) -> int:
        """Entries the kernel's flow map holds.

        ``len()`` is the Marker's own bookkeeping; only the map can tell whether
        something else (an eviction, another program) took entries away.
        """
        self._check_open()
        return sum(n for _, _, n in self._batches())

    def __len__(self) -> int:
        """Map entries in use (a flow inserted both ways counts twice)."""
        return self._count

    def clear(self) -> None:
        """Remove every flow."""
        self._check_open()
        left = 0
        for raw, _ in self._entries():
            err = self._lib.bpf_map_delete_elem(self._fd, raw)
            left += err not in (0, -errno.ENOENT)
        self._count = 0
        if self._filter is not None:
            if left:
                self._filter.bump()  # bits stay for what could not be deleted
            else:
                self._filter.reset()

    def counters(self) -> dict[str, int]:
        """The classifier's counters, summed over CPUs and over its copies."""
        self._check_open()
        totals: dict[str, int] = {}
        for prog in self._programs.values():
            for name, value in prog.counters().items():
                totals[name] = totals.get(name, 0) + value
        return totals

    # -- lifetime -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise MarkerError("the marker is closed")

    def close(self) -> None:
        """Detach from every interface and unload. Idempotent; run at interpreter exit too."""
        if self._closed:
            return
        self._closed = True
        errors = []
        with self._home.entered():
            for att in self._attachments.values():
                try:
                    att.detach()
                except MarkerError as exc:
                    errors.append(exc)
        self._attachments.clear()
        self._home.close()
        for prog in self._programs.values():
            prog.close()
        self._programs.clear()
        self._filter = None
        _open_markers.discard(self)
        if errors:
            raise errors[0]

    def __enter__(self) -> Marker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _htons(value: int) -> int:
    return ((value & 0xFF) << 8) | (value >> 8) if sys.byteorder == "little" else value


def _flow_of(key: bytes) -> Flow:
    """The Flow a packed ``struct flow_key`` stands for."""
    import ipaddress

    ffi = _extension()[0]
    k = ffi.from_buffer("struct flow_key *", key)
    return Flow(
        _PROTO_NAMES.get(int(k.proto), str(int(k.proto))),
        ipaddress.IPv6Address(ffi.buffer(k.saddr)[:]),
        ipaddress.IPv6Address(ffi.buffer(k.daddr)[:]),
        _htons(int(k.sport)),
        _htons(int(k.dport)),
    )


_open_markers: weakref.WeakSet[Marker] = weakref.WeakSet()


@atexit.register
def _close_open_markers() -> None:
    for marker in list(_open_markers):
        with suppress(MarkerError):
            marker.close()
