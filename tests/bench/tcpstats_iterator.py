"""The other way to read TCP statistics, for bench_telemetry to weigh against sock_diag:
bpf/tcpstats.bpf.c, a BPF iterator over the kernel's TCP sockets.

One ``read`` of the iterator returns a fixed-size record per open IPv6 TCP socket
(bpf/tcpstats.h, whose layout the extension carries), which one ``struct.iter_unpack``
takes apart. It needs the kernel's BTF, CAP_BPF and CAP_PERFMON, and clang to compile it.
"""

from __future__ import annotations

import os
import struct
from operator import itemgetter
from pathlib import Path
from typing import Any

from bench_classifier import compile_bpf

from flowlabel import tcpinfo
from flowlabel.bpf.ext import KernelObject, errno_error, extension
from flowlabel.bpf.objfile import load_object, open_object
from flowlabel.errors import MarkerError

PROGRAM_NAME = "tcp_stats"
RECORD = "struct tcp_stats_record"
#: struct module codes of the C types the record uses.
_CODES = {"uint8_t": "B", "uint16_t": "H", "uint32_t": "I", "unsigned long long": "Q"}


def record_layout(ffi: Any) -> tuple[struct.Struct, tuple[str, ...]]:
    """``struct tcp_stats_record`` as a struct.Struct and its member names, from cffi's offsets
    (so bpf/tcpstats.h is the one definition); padding members are left out."""
    fmt, names, at = "=", [], 0
    for name, field in ffi.typeof(RECORD).fields:
        if field.offset > at:
            fmt += f"{field.offset - at}x"
        size = ffi.sizeof(field.type)
        if name.startswith("pad"):
            fmt += f"{size}x"
        else:
            kind = field.type.kind
            fmt += f"{size}s" if kind == "array" else _CODES[field.type.cname]
            names.append(name)
        at = field.offset + size
    fmt += f"{ffi.sizeof(RECORD) - at}x" if ffi.sizeof(RECORD) > at else ""
    layout = struct.Struct(fmt)
    if layout.size != ffi.sizeof(RECORD):
        raise MarkerError(f"{RECORD}: unpacked as {layout.size} bytes, the extension says "
                          f"{ffi.sizeof(RECORD)}")
    return layout, tuple(names)


class TcpStatsIterator(KernelObject):
    """The iterator loaded and attached; :meth:`read` walks the sockets of the calling thread's
    network namespace."""

    def __init__(self, workdir: Path) -> None:
        self._ffi, self._lib = extension()
        ffi, lib = self._ffi, self._lib
        self._obj: Any = ffi.NULL
        self._link: Any = ffi.NULL
        self.path = compile_bpf("tcpstats", workdir)
        try:
            self._obj = open_object(self.path)
            load_object(self._obj, self.path)
            prog = lib.bpf_object__find_program_by_name(self._obj, PROGRAM_NAME.encode())
            if prog == ffi.NULL:
                raise MarkerError(f"{self.path} has no {PROGRAM_NAME} program")
            self._link = lib.bpf_program__attach_iter(prog, ffi.NULL)
            if self._link == ffi.NULL:
                raise errno_error("attaching the TCP statistics iterator", ffi.errno)
        except BaseException:
            self.close()
            raise
        self.layout, self.names = record_layout(ffi)
        # The record's members in TcpStats' order (TcpStats' times carry their unit in the name).
        renamed = {"rtt_us": "rtt", "rttvar_us": "rttvar", "min_rtt_us": "min_rtt"}
        self._pick = itemgetter(*(self.names.index(renamed.get(f, f)) for f in tcpinfo.TcpStats._fields))

    def read(self) -> bytes:
        """The records of every open IPv6 TCP socket, as the kernel wrote them."""
        fd = self._lib.bpf_iter_create(self._lib.bpf_link__fd(self._link))
        if fd < 0:
            raise errno_error("reading the TCP statistics iterator", fd)
        chunks = []
        try:
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks)

    def records(self) -> list[tuple[Any, ...]]:
        """Each record unpacked, its members in the order of :attr:`names`."""
        return list(self.layout.iter_unpack(self.read()))

    def sweep(self) -> dict[tcpinfo.Socket, tcpinfo.TcpStats]:
        """What :func:`flowlabel.tcpinfo.sweep` returns, from the iterator's records."""
        pick, new, states = self._pick, tuple.__new__, tcpinfo.STATES
        # TcpStats begins with the state, which the iterator writes only for open sockets.
        return {r[:4]: new(tcpinfo.TcpStats, (states[v[0]], *v[1:]))
                for r in self.records() for v in (pick(r),)}

    def close(self) -> None:
        """Detach and unload. Idempotent."""
        ffi, lib = self._ffi, self._lib
        if self._link != ffi.NULL:
            lib.bpf_link__destroy(self._link)
            self._link = ffi.NULL
        if self._obj != ffi.NULL:
            lib.bpf_object__close(self._obj)
            self._obj = ffi.NULL
