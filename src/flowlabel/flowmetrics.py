"""Per-flow TCP gauges for Prometheus, with flowd-go's metric names and labels.

Opt-in (``backends.prometheus.flowMetrics``) and bounded: at most
``maxFlowMetrics`` flows are exported per scrape (the first in the flow table),
and a scrape that leaves flows out says how many and counts itself. Each scrape
reads every socket's ``tcp_info`` and congestion control in one sock_diag dump
(:mod:`.tcpinfo`).
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

__all__ = ["CA_INFO", "FLOW_GAUGES", "FlowMetrics"]

log = logging.getLogger(__name__)

#: flowd-go's metric names with their help, and the tcp_info field (:data:`.tcpinfo.TCP_INFO_FIELDS`)
#: that feeds each. Where flowd-go's own wiring differs, the help decides: ``flow_tcp_retrans``
#: is the connection's total (flowd-go adds up samples of tcpi_retrans), ``flow_tcp_lastack``
#: the last ACK received (flowd-go reads the last one sent) and ``flow_tcp_rcvmss`` is set
#: (flowd-go declares it only).
FLOW_GAUGES = (
    ("flow_tcp_retrans", "Retransmitted segments over the connection's life", "total_retrans"),
    ("flow_tcp_rto", "Retransmit timeout [us]", "rto"),
    ("flow_tcp_ato", "Delayed ACK timeout [us]", "ato"),
    ("flow_tcp_rtt", "Round-trip time [us]", "rtt"),
    ("flow_tcp_rtt_var", "Round-trip time variance [us]", "rttvar"),
    ("flow_tcp_minrtt", "Minimum round-trip time [us]", "min_rtt"),
    ("flow_tcp_pmtu", "Path MTU [B]", "pmtu"),
    ("flow_tcp_mss", "Sender's MSS [B]", "snd_mss"),
    ("flow_tcp_rcvmss", "Receiver's MSS [B]", "rcv_mss"),
    ("flow_tcp_advmss", "Advertised MSS [B]", "advmss"),
    ("flow_tcp_cwnd", "Sending congestion window [segments]", "snd_cwnd"),
    ("flow_tcp_ssthresh", "Slow start size threshold [segments]", "snd_ssthresh"),
    ("flow_tcp_bytes_sent_total", "Bytes sent (RFC 4898 tcpEStatsPerfHCDataOctetsOut)", "bytes_sent"),
    ("flow_tcp_bytes_acked_total", "Bytes acked (RFC 4898 tcpEStatsAppHCThruOctetsAcked)", "bytes_acked"),
    ("flow_tcp_bytes_received_total", "Bytes received (RFC 4898 tcpEStatsAppHCThruOctetsReceived)",
     "bytes_received"),
    ("flow_tcp_segs_out_total", "Segments sent (RFC 4898 tcpEStatsPerfSegsOut)", "segs_out"),
    ("flow_tcp_segs_in_total", "Segments received (RFC 4898 tcpEStatsPerfSegsIn)", "segs_in"),
    ("flow_tcp_data_segs_out_total", "Data segments sent (RFC 4898 tcpEStatsDataSegsOut)", "data_segs_out"),
    ("flow_tcp_data_segs_in_total", "Data segments received (RFC 4898 tcpEStatsDataSegsIn)", "data_segs_in"),
    ("flow_tcp_lastsnd", "Now - last sent data packet [ms]", "last_data_sent"),
    ("flow_tcp_lastrcv", "Now - last received data packet [ms]", "last_data_recv"),
    ("flow_tcp_lastack", "Now - last received ACK [ms]", "last_ack_recv"),
    ("flow_tcp_pacing_rate", "Pacing rate [Bps]", "pacing_rate"),
    ("flow_tcp_delivery_rate", "Delivery rate (packets delivered in an interval * MSS / interval) [Bps]",
     "delivery_rate"),
    ("flow_tcp_delivered", "Data packets delivered, retransmissions included", "delivered"),
    ("flow_tcp_busy", "Time spent sending data or stalled [us]", "busy_time"),
    ("flow_tcp_rwnd_limited", "Time spent stalled by the receiver's window [us]", "rwnd_limited"),
    ("flow_tcp_rcv_space", "Receiver queue space [B]", "rcv_space"),
    ("flow_tcp_rcv_ssthresh", "Current window clamp [B]", "rcv_ssthresh"),
    ("flow_tcp_rcv_snd_wnd", "Peer's advertised receive window after scaling [B]", "snd_wnd"),
)
#: 1 for each flow, with its congestion control algorithm as the ``alg`` label.
CA_INFO = ("flow_tcp_rcv_ca_info", "Congestion Algorithm (CA) information")


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
        ca_info: list[Sample] = []
        exported = 0
        self.omitted = 0
        if tcp:
            try:
                sockets = tcpinfo.sweep_info()
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
                    value: Any = stats.get(field)  # absent: older kernels' shorter tcp_info
                    if value is not None:
                        samples[name].append((labels, float(value)))
                if stats["cong"]:
                    ca_info.append(((*labels, ("alg", stats["cong"])), 1.0))
            if self.omitted:
                self.capped += 1
        families = [Family(name, "gauge", help, samples[name]) for name, help, _ in FLOW_GAUGES]
        families.append(Family(CA_INFO[0], "gauge", CA_INFO[1], ca_info))
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
