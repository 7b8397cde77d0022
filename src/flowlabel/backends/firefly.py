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
end firefly carries the last of them. The extension runs those rounds
(:mod:`flowlabel.ongoing`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator
from typing import Any

from .. import enrichment, times
from ..config import FireflySender
from ..events import EventError, FlowEvent, OngoingFirefly, format_firefly, syslog_header
from ..flow import key_protocol
from ..flowtable import ENDED, IPV4, REFRESHED, STARTED, Change, FlowRecord, FlowTable
from ..metrics import Family
from ..ongoing import OngoingRound
from ..udp import Target, UdpSender, resolve, target_of

__all__ = ["FireflyBackend"]

#: Flows an ongoing round writes before it lets other work run (FireflyBackend.ongoing_steps).
ONGOING_STEP = 1000

_NOT_RESENT = "firefly"


class FireflyBackend:
    name = "firefly"

    def __init__(self, config: FireflySender) -> None:
        self.config = config
        self.collectors: list[Target] = []
        self.ongoing_sent = 0
        self._sender = UdpSender("firefly")
        #: The ongoing round (with ``enrich``), and the label each TCP flow was registered in it
        #: with, by key (a flow can be relabelled; one whose firefly cannot be written is here
        #: but not in the round).
        self._round: OngoingRound | None = None
        self._registered: dict[bytes, int] = {}
        self._registered_version = -1

    def start(self) -> None:
        """Resolve the collectors, and set up the ongoing round with ``enrich``; a name that does
        not resolve raises :class:`ConfigError`, a round that cannot be set up
        :class:`~flowlabel.errors.NotSupportedError` (no extension) or OSError."""
        if self.config.send_to_collector:
            targets = [resolve(host, port, path) for host, port, path in self.config.collector_endpoints()]
            self.collectors = list(dict.fromkeys(targets))
        if self.config.enrich:
            self._round = OngoingRound(self.config.enrichment_mode, self.collectors)

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
                info = self._forget(record.key)
                extra = None if info is None else enrichment.members(info, self.config.enrichment_mode)
                self.send(event._replace(experiment=record.experiment, activity=record.activity,
                                         start_time=record.start_time, end_time=end), extra)
            elif outcome == REFRESHED and change.relabel and change.record is not None:
                self._relabel(change.record)
            elif outcome == IPV4 and event.state in ("start", "end"):
                self.send(event)

    def _relabel(self, record: FlowRecord) -> None:
        """A registered flow's firefly written anew with its new context (it gets none in the
        round under way, which read its statistics with the old)."""
        if self._round is not None and record.key in self._registered:
            self._registered[record.key] = record.label
            self._put(record)

    def _forget(self, key: bytes) -> dict[str, Any] | None:
        """Takes the flow out of the ongoing round (at once: a round in steps skips it from now
        on); its last TCP statistics, if a round read them."""
        if self._round is None or self._registered.pop(key, None) is None:
            return None
        info = self._round.last(key)
        self._round.drop(key)
        return info

    def ongoing(self, table: FlowTable) -> int:
        """An ongoing firefly for each TCP flow of ``table`` with a socket here; how many were sent."""
        *_, sent = self.ongoing_steps(table)
        return sent

    def ongoing_steps(self, table: FlowTable, step: int = ONGOING_STEP) -> Iterator[int]:
        """:meth:`ongoing` in steps of ``step`` flows, yielding the count sent so far after each, so
        that a caller on an event loop can let events and requests in between. A flow that ends,
        or is relabelled, while the round goes on gets no ongoing firefly in it."""
        round_ = self._round
        if round_ is None:
            yield 0
            return
        self._register(table)
        if not len(round_):
            yield 0
            return
        try:
            left = round_.dump()
        except OSError as exc:
            self._sender.fail("ongoing fireflies not sent: %s", exc)
            yield 0
            return
        current = times.format_time(times.now())
        header = syslog_header(current) if self.config.prepend_syslog else ""
        written = 0
        while True:
            left, done = round_.send(header, current, step)
            written += done.written
            self.ongoing_sent += done.written
            self._sender.sent += done.sent
            if done.too_long:
                self._sender.fail("%d ongoing fireflies not written: longer than a datagram holds "
                                  "(65,507 bytes)", done.too_long, count=done.too_long)
            if done.errors:
                if isinstance(done.last_receiver, int):
                    address, port = self.collectors[done.last_receiver][1]
                else:
                    address, port = done.last_receiver
                self._sender.fail("%d ongoing fireflies not sent, the last to %s port %d: %s", done.errors,
                                  address, port, os.strerror(done.last_errno), count=done.errors)
            yield written
            if not left:
                return

    def _register(self, table: FlowTable) -> None:
        """The round's flows made the table's TCP flows (if it changed since the last round)."""
        assert self._round is not None
        if table.version == self._registered_version:
            return
        registered, now = self._registered, {}
        for key, label in table.labels():
            if key_protocol(key) != socket.IPPROTO_TCP:
                continue
            now[key] = label
            if registered.get(key) == label:
                continue
            record = table.get_key(key)
            if record is not None:
                self._put(record)
        for key in registered.keys() - now.keys():
            self._round.drop(key)
        self._registered, self._registered_version = now, table.version

    def _put(self, record: FlowRecord) -> None:
        """Registers the flow in the round; one whose firefly cannot be written is logged instead."""
        assert self._round is not None
        flow = record.flow
        try:
            event = FlowEvent("ongoing", flow.protocol, flow.src, flow.dst, flow.sport, flow.dport,
                              record.experiment, record.activity, record.start_time, None, record.application)
            template = OngoingFirefly(event).template(*self._round.marks)
            destination = (target_of(str(flow.dst), self.config.destination_port)
                           if self.config.send_to_destination else None)
            self._round.put(record.key, template, destination)
        except (EventError, ValueError, OSError) as exc:
            self._round.drop(record.key)
            self._sender.fail("ongoing firefly for %s not written: %s", flow, exc)

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
        self._round, self._registered, self._registered_version = None, {}, -1

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
