"""Per-flow TCP gauges for Prometheus, with flowd-go's metric names and labels.

Opt-in (``backends.prometheus.flowMetrics``) and bounded: at most
``maxFlowMetrics`` flows are exported per scrape (the first in the flow table),
and a scrape that leaves flows out says how many and counts itself. Each scrape
reads every socket's ``tcp_info`` in one sock_diag dump (:mod:`.tcpinfo`).
Labels are flowd-go's: ``act``, ``exp``, ``src``, ``dst``, ``flow`` (``<sport:dport>``)
and ``flavour`` (``netlink``, for sock_diag).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from . import tcpinfo
from .flowtable import FlowRecord
from .metrics import Family, Sample

__all__ = ["FLOW_GAUGES", "FlowMetrics"]

log = logging.getLogger(__name__)

#: flowd-go's metric name, its help, and the tcp_info field that feeds it.
FLOW_GAUGES = (
    ("flow_tcp_rtt", "Round-trip time [us]", "rtt_us"),
    ("flow_tcp_rtt_var", "Round-trip time variance [us]", "rttvar_us"),
    ("flow_tcp_minrtt", "Minimum round-trip time [us]", "min_rtt_us"),
    ("flow_tcp_mss", "Sender's MSS [B]", "snd_mss"),
    ("flow_tcp_cwnd", "Sending congestion window [segments]", "snd_cwnd"),
    ("flow_tcp_ssthresh", "Slow start size threshold [segments]", "snd_ssthresh"),
    ("flow_tcp_retrans", "Retransmitted segments over the connection's life", "total_retrans"),
    ("flow_tcp_bytes_sent_total", "Bytes sent (RFC 4898 tcpEStatsPerfHCDataOctetsOut)", "bytes_sent"),
    ("flow_tcp_bytes_acked_total", "Bytes acked (RFC 4898 tcpEStatsAppHCThruOctetsAcked)", "bytes_acked"),
    ("flow_tcp_bytes_received_total", "Bytes received (RFC 4898 tcpEStatsAppHCThruOctetsReceived)",
     "bytes_received"),
    ("flow_tcp_pacing_rate", "Pacing rate [Bps]", "pacing_rate"),
    ("flow_tcp_delivery_rate", "Delivery rate [Bps]", "delivery_rate"),
)


class FlowMetrics:
    """A metrics collector over the active flows that ``records`` returns."""

    def __init__(self, records: Callable[[], Iterable[FlowRecord]], limit: int) -> None:
        self._records = records
        self.limit = limit
        self.omitted = 0
        self.capped = 0

    def families(self) -> list[Family]:
        tcp = [record for record in self._records() if record.flow.protocol == "tcp"]
        samples: dict[str, list[Sample]] = {name: [] for name, *_ in FLOW_GAUGES}
        exported = 0
        self.omitted = 0
        if tcp:
            try:
                sockets = tcpinfo.sweep()
            except OSError as exc:
                log.warning("no per-flow TCP metrics: %s", exc)
                sockets = {}
            for record in tcp:
                stats = tcpinfo.of_flow(sockets, record.flow)
                if stats is None:
                    continue
                if exported >= self.limit:
                    self.omitted += 1
                    continue
                exported += 1
                labels = _labels(record)
                for name, _, field in FLOW_GAUGES:
                    value: Any = getattr(stats, field)
                    if value is not None:
                        samples[name].append((labels, float(value)))
            if self.omitted:
                self.capped += 1
        families = [Family(name, "gauge", help, samples[name]) for name, help, _ in FLOW_GAUGES]
        families.append(Family.single("flowlabel_flow_metrics_omitted", "gauge",
                                      "TCP flows left out of the per-flow metrics at the last scrape "
                                      "(maxFlowMetrics)", self.omitted))
        families.append(Family.single("flowlabel_flow_metrics_capped_total", "counter",
                                      "Scrapes that left flows out of the per-flow metrics", self.capped))
        return families


def _labels(record: FlowRecord) -> tuple[tuple[str, str], ...]:
    flow = record.flow
    return (("act", str(record.activity)), ("exp", str(record.experiment)), ("src", str(flow.src)),
            ("dst", str(flow.dst)), ("flow", f"<{flow.sport}:{flow.dport}>"), ("flavour", "netlink"))
