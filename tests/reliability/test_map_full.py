"""More active flows than ``maxFlows``: reported, counted, and the daemon keeps serving.

The kernel map is ``maxFlows`` entries of a plain hash map: it refuses more
itself (E2BIG), and never evicts a flow that is marked.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from reliability_support import KernelMap, events_by_outcome, flow_line, loopback_daemon

from support import wait_until

pytestmark = pytest.mark.netns

MAX_FLOWS = 100
OFFERED = 150


def test_a_full_map_is_reported_and_the_daemon_keeps_serving(
    namespace: Any, tmp_path: Path, daemons: list[Any], report: dict[str, Any]
) -> None:
    daemon = loopback_daemon(namespace, tmp_path, max_flows=MAX_FLOWS)
    daemons.append(daemon.start())
    daemon.write_pipe(b"".join(flow_line("start", 20000 + i, 443, 7, 8) for i in range(OFFERED)))
    assert wait_until(lambda: daemon.api("GET", "/health")["events"] >= OFFERED, timeout=10)

    metrics = daemon.metrics()
    outcomes = events_by_outcome(metrics, "pipe")
    kmap = KernelMap(daemon.process.pid)
    try:
        assert outcomes == {"started": MAX_FLOWS, "failed": OFFERED - MAX_FLOWS}
        assert metrics["flowlabel_map_full_total"] == OFFERED - MAX_FLOWS
        assert daemon.api("GET", "/health")["active_flows"] == MAX_FLOWS
        assert len(kmap.entries()) == MAX_FLOWS
        assert "not marked: the flow map is full" in daemon.log()
        # The map's own limit: one more key, written behind the daemon's back, is refused.
        assert kmap.insert(kmap.key("tcp", "::1", "::1", 29998, 443), 1) == -errno.E2BIG

        # Some flows end; a later start is applied again.
        daemon.write_pipe(b"".join(flow_line("end", 20000 + i, 443, 7, 8) for i in range(10)))
        daemon.write_pipe(flow_line("start", 29999, 443, 9, 10))
        late = kmap.key("tcp", "::1", "::1", 29999, 443)
        assert wait_until(lambda: kmap.get(late) is not None, timeout=5)
        assert len(kmap.entries()) == MAX_FLOWS - 9
    finally:
        kmap.close()
    report.update({
        "maxFlows": MAX_FLOWS,
        "flows offered": OFFERED,
        "marked": MAX_FLOWS,
        "refused (flowlabel_map_full_total)": int(metrics["flowlabel_map_full_total"]),
        "later start applied": "yes",
        "insert beyond maxFlows by the kernel map": "E2BIG",
    })
    assert daemon.alive() and daemon.stop() == 0
