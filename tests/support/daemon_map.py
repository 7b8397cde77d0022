"""A running daemon's flow map, read from outside through a copy of its descriptor.

``pidfd_getfd`` duplicates the daemon's map descriptor into the test process, so
tests check the kernel's map itself rather than what the daemon says about it.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

SYS_PIDFD_GETFD = 438  # the same number on every architecture
BPF_MAP_TYPE_HASH = 1  # the flow map's type (bpf/flows.bpf.h)


def flow_map_fd(pid: int) -> int:
    """A descriptor, in this process, of the flow map process ``pid`` holds."""
    from flowlabel import _bpf  # type: ignore[attr-defined]

    key_size = str(_bpf.ffi.sizeof("struct flow_key"))
    for name in sorted(os.listdir(f"/proc/{pid}/fdinfo"), key=int):
        try:
            info = Path(f"/proc/{pid}/fdinfo/{name}").read_text()
        except OSError:
            continue
        pairs = (line.split(":\t", 1) for line in info.splitlines() if ":\t" in line)
        fields = {key: value.strip() for key, value in pairs}
        if fields.get("map_type") == str(BPF_MAP_TYPE_HASH) and fields.get("key_size") == key_size:
            pidfd = os.pidfd_open(pid)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
                if fd < 0:
                    raise OSError(ctypes.get_errno(), "pidfd_getfd")
                return int(fd)
            finally:
                os.close(pidfd)
    raise RuntimeError(f"process {pid} has no flow map open")
