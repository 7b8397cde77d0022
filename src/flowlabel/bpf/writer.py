"""The classifier's direct writer (bpf/writer.bpf.c), loaded where the kernel can run it.

The classifier tail-calls it for unicast UDP through its ``writers`` program array; with the
array empty, the classifier writes every packet with a helper call instead, so a kernel that
cannot run the writer marks the same packets, only at a higher cost.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

from ..errors import MarkerError, ObjectError, VerifierError
from .ext import KernelObject, bundled_object, errno_error, extension
from .objfile import load_object, open_object

ENTRY = "label_writer"
STORE = "label_store"
#: The kfunc the writer reads the kernel's sk_buff with, and the release that added it.
KFUNC, KFUNC_SINCE = "bpf_cast_to_kern_ctx", "Linux 6.2"
#: The kernel's own BTF, by which libbpf finds the kfunc and the sk_buff field.
VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")


def writer_object(marker: Path) -> Path:
    """writer.bpf.o from beside the classifier's object, else the one in the package."""
    beside = marker.with_name("writer.bpf.o")
    return beside if beside.is_file() else bundled_object("writer")


class DirectWriter(KernelObject):
    """The writer object at ``path`` (see :func:`writer_object`) loaded for a classifier of mode
    ``l3`` (and ready for a TCX link with ``tcx``).

    Raises :class:`~flowlabel.errors.MarkerError`, saying why, where the kernel cannot run it:
    it needs the kernel's BTF, bpf_cast_to_kern_ctx (Linux 6.2), a JIT that calls kernel
    functions, and CAP_PERFMON to read the kernel's sk_buff.
    """

    def __init__(self, path: Union[str, os.PathLike[str]], *, l3: bool = False, tcx: bool = False) -> None:
        self._ffi, self._lib = extension()
        self._obj: Any = self._ffi.NULL
        self.path = Path(path)
        if not VMLINUX_BTF.exists():
            raise MarkerError(f"the kernel publishes no BTF ({VMLINUX_BTF})")
        self._obj = open_object(self.path)
        try:
            self._configure(l3, tcx)
            try:
                load_object(self._obj, self.path)
            except VerifierError as exc:
                if KFUNC in exc.log and "not found" in exc.log:
                    raise MarkerError(f"this kernel has no {KFUNC} ({KFUNC_SINCE})") from None
                raise
            self.prog_fd = int(self._lib.bpf_program__fd(self._program(ENTRY)))
            stores = self._lib.bpf_object__find_map_by_name(self._obj, b"stores")
            self.stores_fd = int(self._lib.bpf_map__fd(stores))  # label_store's array
        except BaseException:
            self.close()
            raise

    def _program(self, name: str) -> Any:
        prog = self._lib.bpf_object__find_program_by_name(self._obj, name.encode())
        if prog == self._ffi.NULL:
            raise ObjectError(f"{self.path} has no program named {name!r}")
        return prog

    def _configure(self, l3: bool, tcx: bool) -> None:
        ffi, lib = self._ffi, self._lib
        if tcx:  # a program array takes only programs of the attach type of those already in it
            for name in (ENTRY, STORE):
                lib.bpf_program__set_expected_attach_type(self._program(name), lib.BPF_TCX_EGRESS)
        size = ffi.new("size_t *")
        ptr = lib.fl_rodata_var(self._obj, b"cfg", size)
        if ptr == ffi.NULL or size[0] < ffi.sizeof("struct marker_config"):
            raise ObjectError(f"{self.path} has no 'cfg' configuration to set l3 in")
        size_of = ffi.sizeof("struct marker_config")
        ffi.memmove(ptr, ffi.new("struct marker_config *", {"l3": int(l3)}), size_of)

    def install(self, writers_fd: int) -> None:
        """Put the writer in slot 0 of the classifier's ``writers`` program array."""
        ffi, lib = self._ffi, self._lib
        slot, prog = ffi.new("uint32_t *", 0), ffi.new("uint32_t *", self.prog_fd)
        err = lib.bpf_map_update_elem(writers_fd, slot, prog, 0)
        if err:
            raise errno_error("putting the direct writer in the classifier's program array", err)

    def close(self) -> None:
        """Unload: a classifier whose array still holds the writer keeps it until it goes. Idempotent."""
        if self._obj != self._ffi.NULL:
            self._lib.bpf_object__close(self._obj)
            self._obj = self._ffi.NULL
