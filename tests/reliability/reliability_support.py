"""Helpers of the reliability group: the daemon's kernel map read from outside, flow lines.

The daemon runs as a subprocess (``e2e_support.Daemon``). What it really did to
the kernel is read from its flow map through a duplicate of the daemon's map
descriptor (``pidfd_getfd``), as the daemon benchmark does; the duplicate also
keeps the map alive after the daemon is killed, so a test can see exactly what
the map held at that moment.
"""

from __future__ import annotations

import errno
import os
import socket
import statistics
from pathlib import Path
from typing import Any

from flowlabel.bpf.ext import key_struct
from flowlabel.defaults import MAX_FLOWS
from support.daemon_map import flow_map_fd

LOOPBACK = socket.inet_pton(socket.AF_INET6, "::1")
PROTOCOLS = {"tcp": 6, "udp": 17}
BATCH = 4096


def _bpf() -> tuple[Any, Any]:
    from flowlabel._bpf import ffi, lib

    return ffi, lib


class KernelMap:
    """The flow map of the daemon process ``pid``, through a descriptor of our own."""

    def __init__(self, pid: int) -> None:
        ffi, _ = _bpf()
        self.key_size = ffi.sizeof("struct flow_key")
        self.fd = flow_map_fd(pid)
        self._pack = key_struct(ffi).pack

    def key(self, protocol: str, src: str, dst: str, sport: int, dport: int) -> bytes:
        """The map key of a flow as it leaves the host (``src`` is the local end)."""
        packed_src, packed_dst = (socket.inet_pton(socket.AF_INET6, a) for a in (src, dst))
        return bytes(self._pack(packed_src, packed_dst, sport, dport, PROTOCOLS[protocol]))

    def entries(self) -> dict[bytes, int]:
        """Every key in the map with its label."""
        ffi, lib = _bpf()
        keys = ffi.new("struct flow_key[]", BATCH)
        values = ffi.new("struct flow_value[]", BATCH)
        cursor_in = ffi.new("char[]", self.key_size)
        cursor_out = ffi.new("char[]", self.key_size)
        count = ffi.new("uint32_t *")
        out: dict[bytes, int] = {}
        first = True
        while True:
            count[0] = BATCH
            cursor = ffi.NULL if first else cursor_in
            err = lib.bpf_map_lookup_batch(self.fd, cursor, cursor_out, keys, values, count, ffi.NULL)
            if err and err != -errno.ENOENT:
                raise OSError(-err, "bpf_map_lookup_batch")
            raw = bytes(ffi.buffer(keys, self.key_size * count[0]))
            for i in range(count[0]):
                out[raw[i * self.key_size : (i + 1) * self.key_size]] = int(values[i].label)
            if err:
                return out
            ffi.memmove(cursor_in, cursor_out, self.key_size)
            first = False

    def get(self, key: bytes) -> int | None:
        ffi, lib = _bpf()
        value = ffi.new("struct flow_value *")
        if lib.bpf_map_lookup_elem(self.fd, ffi.from_buffer(key), value) != 0:
            return None
        return int(value.label)

    def insert(self, key: bytes, label: int) -> int:
        """Add a new key; 0, or the negative errno the kernel answered."""
        ffi, lib = _bpf()
        value = ffi.new("struct flow_value *", {"label": label})
        return int(lib.bpf_map_update_elem(self.fd, ffi.from_buffer(key), value, lib.BPF_NOEXIST))

    def delete(self, key: bytes) -> bool:
        ffi, lib = _bpf()
        return bool(lib.bpf_map_delete_elem(self.fd, ffi.from_buffer(key)) == 0)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> KernelMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def flow_line(state: str, sport: int, dport: int, experiment: int, activity: int,
              src: str = "::1", dst: str = "::1", protocol: str = "tcp") -> bytes:
    return f"{state} {protocol} {src} {sport} {dst} {dport} {experiment} {activity}\n".encode()


def write_lines(path: Path | str, data: bytes) -> None:
    """Write whole lines in pieces of at most 4096 bytes (PIPE_BUF), so other writers never cut into them."""
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            cut = len(view) if len(view) <= 4096 else bytes(view[:4096]).rfind(b"\n") + 1
            written = os.write(fd, view[:cut])
            view = view[written:]
    finally:
        os.close(fd)


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    """p50, p99 and the maximum."""
    ordered = sorted(samples)
    p99 = ordered[max(0, int(len(ordered) * 0.99 + 0.5) - 1)]
    return statistics.median(ordered), p99, ordered[-1]


def loopback_daemon(ns: Any, root: Path, *, max_flows: int = MAX_FLOWS, firefly: bool = False,
                    **top: Any) -> Any:
    """A daemon marking on the namespace's loopback, with the pipe and the API (and fireflies)."""
    from e2e_support import Daemon

    plugins: dict[str, Any] = {"namedPipe": {"pipePath": str(root / "np")}, "api": {}}
    if firefly:
        plugins["firefly"] = {}
    document: dict[str, Any] = {
        "pidPath": str(root / "flowlabel.pid"),
        "workDir": str(root / "work"),
        "summaryInterval": 0,
        "plugins": plugins,
        "backends": {"ebpf": {"targetInterface": "lo", "maxFlows": max_flows}},
        **top,
    }
    return Daemon(ns, root, document)


def events_by_outcome(metrics: dict[str, float], source: str) -> dict[str, int]:
    """The daemon's event counts of one source, by outcome."""
    prefix = f'flowlabel_events_total{{source="{source}",outcome="'
    return {name[len(prefix) : -2]: int(value) for name, value in metrics.items() if name.startswith(prefix)}


def udp_drops(pid: int, port: int) -> int:
    """The kernel's drop counter of the UDP socket bound to ``port`` in ``pid``'s namespace."""
    for row in Path(f"/proc/{pid}/net/udp").read_text().splitlines()[1:]:
        fields = row.split()
        if int(fields[1].split(":")[1], 16) == port:
            return int(fields[-1])
    raise AssertionError(f"no UDP socket on port {port}")
