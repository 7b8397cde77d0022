"""Shared test configuration: which tests can run on this host, and why not."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest


def _kernel_unavailable() -> str | None:
    """Why BPF tests cannot run here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return f"BPF tests need Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return "BPF tests need root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)"
    try:
        from flowlabel import _bpf  # noqa: F401
    except ImportError as exc:
        return f"the flowlabel._bpf extension is not installed ({exc}); run the suite with `nox -s tests`"
    return None


KERNEL_UNAVAILABLE = _kernel_unavailable()
#: Set by `nox -s tests` and the kernel matrix: tests that need the kernel must run, not skip.
KERNEL_REQUIRED = os.environ.get("FLOWLABEL_REQUIRE_KERNEL") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if KERNEL_UNAVAILABLE is None:
        return
    needing = [item for item in items if "kernel" in item.keywords or "netns" in item.keywords]
    if needing and KERNEL_REQUIRED:
        raise pytest.UsageError(
            f"{len(needing)} tests need the kernel, and cannot run here: {KERNEL_UNAVAILABLE} "
            "(FLOWLABEL_REQUIRE_KERNEL=1 forbids skipping them)"
        )
    skip = pytest.mark.skip(reason=KERNEL_UNAVAILABLE)
    for item in needing:
        item.add_marker(skip)


@pytest.fixture
def pair() -> Iterator[Any]:
    """Namespaces ``a`` and ``b`` joined by a veth pair (support.netns.Pair); deleted after the test."""
    from support.netns import Pair

    with Pair() as p:
        yield p


@pytest.fixture
def daemons() -> Iterator[list[Any]]:
    """Daemons (e2e_support.Daemon) a test started; any still running afterwards are killed."""
    started: list[Any] = []
    yield started
    for daemon in started:
        daemon.kill()
