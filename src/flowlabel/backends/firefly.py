"""The firefly backend: a firefly datagram for every flow that starts or ends.

Each firefly goes to the flow's destination address at ``destinationPort``
(10514) unless ``sendToDestination`` is off, and, with ``sendToCollector``, to
every collector (``collectorAddress``:``collectorPort`` and the ``collectors``
list), optionally behind an RFC 5424 syslog header.

Events that arrived as fireflies are not written again: they already reached a
collector once (the firefly listener can relay them verbatim, see
:mod:`flowlabel.relay`).

With ``enrich``, every TCP flow with a socket on this host also gets an
``ongoing`` firefly each ``enrichers.period`` (:meth:`FireflyBackend.ongoing`),
carrying the connection's TCP statistics in ``netlink`` (in the shape of
``enrichmentMode``, :mod:`flowlabel.enrichment`) and its bytes in ``usage``; the
end firefly carries the last of them.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from typing import Any

from .. import enrichment, tcpinfo, times
from ..config import FireflySender
from ..events import EventError, FlowEvent, OngoingFirefly, format_firefly, syslog_header
from ..flow import Flow, key_protocol
from ..flowtable import ENDED, IPV4, STARTED, Change, FlowRecord, FlowTable
from ..metrics import Family
from ..udp import Target, UdpSender, resolve, target_of

__all__ = ["FireflyBackend"]

#: Flows an ongoing round writes before it lets other work run (FireflyBackend.ongoing_steps).
ONGOING_STEP = 1000
#: An ongoing firefly written but for its times and members, where it goes, and its flow.
_Prepared = tuple[OngoingFirefly, Target, Flow]

_NOT_RESENT = "firefly"


class FireflyBackend:
    name = "firefly"

    def __init__(self, config: FireflySender) -> None:
        self.config = config
        self.collectors: list[Target] = []
        self.ongoing_sent = 0
        self._sender = UdpSender("firefly")
        self._encoder = enrichment.Encoder(config.enrichment_mode)
        #: The last tcp_info of each flow (by key), for its end firefly.
        self._last: dict[bytes, dict[str, Any]] = {}
        #: Each enriched flow's ongoing firefly (written but for its times and TCP members),
        #: destination and flow, by key and label (a flow can be relabelled); None where none
        #: can be written.
        self._ongoing: dict[tuple[bytes, int], _Prepared | None] = {}

    def start(self) -> None:
        """Resolve the collectors; a name that does not resolve raises :class:`ConfigError`."""
        if self.config.send_to_collector:
            targets = [resolve(host, port, path) for host, port, path in self.config.collector_endpoints()]
            self.collectors = list(dict.fromkeys(targets))

    def apply(self, changes: Iterable[Change]) -> None:
        for change in changes:
            if change.source == _NOT_RESENT:
                continue
            event = change.event
            outcome = change.outcome
            if outcome == STARTED and change.record is not None:
                self.send(event._replace(start_time=change.record.start_time))
            elif outcome == ENDED and change.record is not None:
                # The end message carries what the flow was started with.
                record = change.record
                end = event.end_time or times.now()
                info = self._last.pop(record.key, None)
                extra = None if info is None else enrichment.members(info, self.config.enrichment_mode)
                self.send(event._replace(experiment=record.experiment, activity=record.activity,
                                         start_time=record.start_time, end_time=end), extra)
            elif outcome == IPV4 and event.state in ("start", "end"):
                self.send(event)

    def ongoing(self, table: FlowTable) -> int:
        """An ongoing firefly for each TCP flow of ``table`` with a socket here; how many were sent."""
        *_, sent = self.ongoing_steps(table)
        return sent

    def ongoing_steps(self, table: FlowTable, step: int = ONGOING_STEP) -> Iterator[int]:
        """:meth:`ongoing` in steps of ``step`` flows, yielding the count sent so far after each, so
        that a caller on an event loop can let events and requests in between (a round over
        10,000 flows takes a fifth of a second). A flow that ends, or is relabelled, while the
        round goes on gets no ongoing firefly in it.

        Each period touches every flow, so this works from the table's keys and labels; a flow's
        record is read only when its firefly is first written (or its label changed)."""
        flows = table.labels()
        sockets: dict[Any, dict[str, Any]] = {}
        if any(key_protocol(key) == socket.IPPROTO_TCP for key, _ in flows):
            # The lean shape needs a dozen fields, the others all of tcp_info.
            lean = self.config.enrichment_mode == "lean"
            sockets = tcpinfo.sweep_fields(enrichment.LEAN_FIELDS) if lean else tcpinfo.sweep_info()
        current = times.format_time(times.now())
        header = syslog_header(current) if self.config.prepend_syslog else ""
        members = self._encoder.members
        send = self._sender.send
        to_destination = self.config.send_to_destination
        of_key, label_of = tcpinfo.of_key, table.label_of
        live: dict[bytes, dict[str, Any]] = {}
        written: dict[tuple[bytes, int], _Prepared | None] = {}
        sent = 0
        version = table.version
        for n, (key, label) in enumerate(flows, 1):
            info = of_key(sockets, key) if sockets else None
            if info is None or (table.version != version and label_of(key) != label):
                continue
            ident = (key, label)
            if ident in self._ongoing:
                prepared = self._ongoing[ident]
            else:
                record = table.get_key(key)
                if record is None:
                    continue  # ended since the round began
                prepared = self._prepare(record)
            live[key] = info
            written[ident] = prepared
            if prepared is None:
                continue
            message, destination, flow = prepared
            payload = message.format(current, members(info), header)
            if to_destination:
                send(payload, destination, flow)
            for target in self.collectors:
                send(payload, target, flow)
            sent += 1
            self.ongoing_sent += 1
            if n % step == 0:
                yield sent
        if table.version != version:
            live = {key: info for key, info in live.items() if label_of(key) is not None}
        # Flows that ended or lost their socket are forgotten.
        self._last, self._ongoing = live, written
        yield sent

    def _prepare(self, record: FlowRecord) -> _Prepared | None:
        flow = record.flow
        try:
            event = FlowEvent("ongoing", flow.protocol, flow.src, flow.dst, flow.sport, flow.dport,
                              record.experiment, record.activity, record.start_time, None, record.application)
            message = OngoingFirefly(event)
            return message, target_of(str(flow.dst), self.config.destination_port), flow
        except (EventError, ValueError) as exc:
            self._sender.fail("ongoing firefly for %s not written: %s", flow, exc)
            return None

    def send(self, event: FlowEvent, extra: dict[str, Any] | None = None) -> None:
        cfg = self.config
        try:
            payload = format_firefly(event, syslog=cfg.prepend_syslog, extra=extra)
        except (EventError, ValueError) as exc:
            self._sender.fail("firefly for %s not written: %s", event.flow, exc)
            return
        if cfg.send_to_destination:
            self._sender.send(payload, target_of(str(event.dst), cfg.destination_port), event.flow)
        for target in self.collectors:
            self._sender.send(payload, target, event.flow)

    def stop(self) -> None:
        self._sender.close()

    def families(self) -> list[Family]:
        return [
            Family.single("flowlabel_fireflies_sent_total", "counter",
                          "Fireflies sent (one per receiver)", self._sender.sent),
            Family.single("flowlabel_firefly_send_errors_total", "counter",
                          "Fireflies that could not be written or sent", self._sender.errors),
            Family.single("flowlabel_fireflies_ongoing_total", "counter",
                          "Ongoing fireflies written (enrich), before sending to each receiver",
                          self.ongoing_sent),
        ]
