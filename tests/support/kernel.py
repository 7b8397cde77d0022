"""What the running kernel is, as the tests see it: an oracle independent of the product's probes."""

from __future__ import annotations

import platform
import re

import pytest


def release() -> tuple[int, int]:
    """(major, minor) of the running kernel."""
    match = re.match(r"(\d+)\.(\d+)", platform.release())
    assert match, f"kernel release {platform.release()!r} not understood"
    return int(match.group(1)), int(match.group(2))


#: Linux 6.6 brought TCX links; before it the classifier sits in a clsact qdisc.
HAS_TCX = release() >= (6, 6)
#: Linux 6.2 brought bpf_cast_to_kern_ctx, which the direct writer needs (with the kernel's BTF).
HAS_DIRECT_WRITER = release() >= (6, 2)
#: Before Linux 5.11 BPF memory is charged to RLIMIT_MEMLOCK instead of the memory cgroup.
MEMLOCK_CHARGED = release() < (5, 11)

needs_tcx = pytest.mark.skipif(
    not HAS_TCX, reason=f"TCX needs Linux 6.6, this is {platform.release()}: the tc path is tested instead"
)

needs_direct_writer = pytest.mark.skipif(
    not HAS_DIRECT_WRITER,
    reason=f"the direct writer needs bpf_cast_to_kern_ctx (Linux 6.2), this is {platform.release()}",
)

#: Parametrize a test over the attach modes this kernel has (tcx is skipped, with the reason, before 6.6).
attach_modes = pytest.mark.parametrize("mode", [pytest.param("tcx", marks=needs_tcx), "tc"])
