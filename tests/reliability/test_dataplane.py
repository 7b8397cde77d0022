"""The data plane never harms traffic: no drops, every packet seen and let through.

One connection runs while the classifier is attached and detached in turn, with
the sender paused around each switch and count (see support/dataplane.py). The
throughput with and without the marker is reported here, not asserted: windows
on a shared machine vary by a few per cent, so the throughput target belongs to
the benchmark (tests/bench/bench_dataplane.py, ``nox -s bench``).
"""

from __future__ import annotations

from typing import Any

import pytest

from support import STRESS
from support.dataplane import measure

pytestmark = pytest.mark.netns

WINDOWS = 60 if STRESS else 20
WINDOW_SECONDS = 0.25


def test_marker_passes_every_packet_and_drops_nothing(report: dict[str, Any]) -> None:
    figures = measure(WINDOWS, WINDOW_SECONDS)
    report.update(figures)
    print(f"throughput with/without the marker: {figures['ratio of medians with/without']:.3f}")
    # Every packet the interface sent passed the classifier, which let each one through.
    assert figures["packets seen (classifier)"] == figures["packets sent while attached (interface)"] > 0
    assert figures["interface tx drops"] == 0
    assert figures["packets marked"] >= 0.99 * figures["packets seen (classifier)"]
