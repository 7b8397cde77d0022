"""Fixtures of the end-to-end tests (helpers in e2e_support.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_support import Daemon, Pair


@pytest.fixture
def pair() -> Iterator[Pair]:
    """Namespaces ``a`` and ``b`` joined by a veth pair; deleted after the test."""
    p = Pair()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test started; any still running afterwards are killed."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.kill()
