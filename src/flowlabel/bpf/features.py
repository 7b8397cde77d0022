"""What the running kernel offers the marker, each feature probed by asking the kernel."""

from __future__ import annotations

import errno
import resource
import socket
from typing import NamedTuple

from .ext import extension


class KernelFeatures(NamedTuple):
    """The probes' answers (they need CAP_BPF, or CAP_SYS_ADMIN before Linux 5.8)."""

    mmapable_array: int  # 0, or the errno (negative) that creating or mapping one gave
    batch_ops: int  # 0, or the errno (negative) that a batched lookup gave
    tcx: bool
    memlock_charged: bool  # BPF memory counts against RLIMIT_MEMLOCK (before Linux 5.11)


def has_tcx() -> bool:
    """Whether the kernel has TCX links: one without them does not know the attach type (EINVAL)."""
    ffi, lib = extension()
    ids = ffi.new("uint32_t[]", 1)
    count = ffi.new("uint32_t *", 1)
    return bool(lib.fl_tcx_progs(socket.if_nametoindex("lo"), ids, count) != -errno.EINVAL)


def memlock_charged() -> bool:
    """Whether the kernel charges BPF memory to RLIMIT_MEMLOCK (forks a short-lived child)."""
    _, lib = extension()
    return bool(lib.fl_probe_memlock_charged() == 1)


def kernel_features() -> KernelFeatures:
    _, lib = extension()
    return KernelFeatures(int(lib.fl_probe_mmapable_array()), int(lib.fl_probe_batch_ops()), has_tcx(),
                          memlock_charged())


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
