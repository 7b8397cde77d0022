"""The socket watcher: bpf/sockets.bpf.c on the root cgroup, telling of TCP sockets that close
(and, when asked, of those that are established)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import MarkerError
from .ext import KernelObject, bundled_object, errno_error, extension
from .objfile import load_object, open_object

PROGRAM_NAME = "watch_sockets"
#: Events copied out of the ring per call.
BATCH = 1024


class SocketEvent(NamedTuple):
    """A TCP socket of this host closed (or was established): its ends (16-byte addresses) and ports."""

    local: bytes
    remote: bytes
    local_port: int
    remote_port: int
    established: bool = False


def cgroup2_root(mounts: str = "/proc/self/mounts") -> str | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup``, or ``.../unified`` on hybrid hosts).

    The last mount wins: a later one may hide an earlier one (containers, chroots).
    """
    found = None
    try:
        with open(mounts) as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == "cgroup2":
                    found = fields[1]
    except OSError:
        return None
    return found


class SocketWatch(KernelObject):
    """The watcher loaded and attached; :attr:`fd` becomes readable when sockets have closed.

    MarkerError when it cannot run here (no cgroup v2, a kernel without ring
    buffers, a missing privilege): the caller falls back to polling. With
    ``report_established`` it tells of new connections too.
    """

    def __init__(self, path: Path | None = None, *, report_established: bool = False) -> None:
        self._ffi, self._lib = extension()
        ffi, lib = self._ffi, self._lib
        self._obj: Any = ffi.NULL
        self._link: Any = ffi.NULL
        self._ring: Any = ffi.NULL
        self.path = path or bundled_object("sockets")
        root = cgroup2_root()
        if root is None:
            raise MarkerError("no cgroup v2 hierarchy is mounted: TCP sockets cannot be watched")
        try:
            self._obj = open_object(self.path)
            if report_established:
                size = ffi.new("size_t *")
                flag = lib.fl_rodata_var(self._obj, b"report_established", size)
                if flag == ffi.NULL:
                    raise MarkerError(f"{self.path} cannot tell of established connections")
                ffi.cast("uint8_t *", flag)[0] = 1
            load_object(self._obj, self.path)
            prog = lib.bpf_object__find_program_by_name(self._obj, PROGRAM_NAME.encode())
            events = lib.bpf_object__find_map_by_name(self._obj, b"socket_events")
            if prog == ffi.NULL or events == ffi.NULL:
                raise MarkerError(f"{self.path} has no {PROGRAM_NAME} program with its socket_events map")
            try:
                cgroup = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                raise MarkerError(f"cannot open the cgroup v2 hierarchy at {root}: {exc.strerror}") from None
            try:
                self._link = lib.bpf_program__attach_cgroup(prog, cgroup)
                if self._link == ffi.NULL:
                    raise errno_error(f"attaching the socket watcher to the cgroup {root}", ffi.errno)
            finally:
                os.close(cgroup)
            self._ring = lib.fl_ring_open(lib.bpf_map__fd(events))
            if self._ring == ffi.NULL:
                raise errno_error("opening the socket watcher's ring buffer", ffi.errno)
        except BaseException:
            self.close()
            raise
        self.fd = int(lib.fl_ring_fd(self._ring))
        self.cgroup = root
        self._out = ffi.new("struct socket_event[]", BATCH)

    def take(self) -> list[SocketEvent]:
        """What happened to sockets since the last call, in order."""
        ffi, lib, out = self._ffi, self._lib, self._out
        established = lib.FLOWLABEL_SOCKET_ESTABLISHED
        found: list[SocketEvent] = []
        while True:
            n = lib.fl_ring_take(self._ring, out, BATCH)
            if n < 0:
                raise errno_error("reading the socket watcher's ring buffer", n)
            for i in range(n):
                e = out[i]
                found.append(SocketEvent(ffi.buffer(e.local)[:], ffi.buffer(e.remote)[:], int(e.local_port),
                                         int(e.remote_port), e.kind == established))
            if n < BATCH:
                return found

    def close(self) -> None:
        """Detach and unload. Idempotent."""
        ffi, lib = self._ffi, self._lib
        if self._ring != ffi.NULL:
            lib.fl_ring_close(self._ring)
            self._ring = ffi.NULL
        if self._link != ffi.NULL:
            lib.bpf_link__destroy(self._link)
            self._link = ffi.NULL
        if self._obj != ffi.NULL:
            lib.bpf_object__close(self._obj)
            self._obj = ffi.NULL
