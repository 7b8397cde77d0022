"""The firefly backend: a firefly datagram for every flow that starts or ends.

Fireflies go to the flow's destination address, or to a configured collector,
at ``fireflyDestinationPort`` (10514 by default), optionally behind a syslog
header. Events that arrived as fireflies are not sent again: they already
reached a collector once, and a daemon listening on the port it sends to
would otherwise echo its own messages forever.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable

from .. import times
from ..config import FireflySender
from ..events import EventError, FlowEvent, format_firefly
from ..flowtable import ENDED, IPV4, STARTED, Change
from ..metrics import Family

__all__ = ["FireflyBackend"]

log = logging.getLogger(__name__)

_NOT_RESENT = "firefly"


class FireflyBackend:
    name = "firefly"

    def __init__(self, config: FireflySender) -> None:
        self.config = config
        self.sent = 0
        self.errors = 0
        self._sockets: dict[int, socket.socket] = {}

    def start(self) -> None:
        pass

    def _socket(self, family: int) -> socket.socket:
        sock = self._sockets.get(family)
        if sock is None:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            self._sockets[family] = sock
        return sock

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
                self.send(event._replace(experiment=record.experiment, activity=record.activity,
                                         start_time=record.start_time, end_time=end))
            elif outcome == IPV4 and event.state in ("start", "end"):
                self.send(event)

    def send(self, event: FlowEvent) -> None:
        cfg = self.config
        target = cfg.collector_address or str(event.dst)
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        try:
            payload = format_firefly(event, syslog=cfg.prepend_syslog)
            self._socket(family).sendto(payload, (target, cfg.firefly_destination_port))
        except (OSError, EventError) as exc:
            self.errors += 1
            log.warning("firefly for %s to %s not sent: %s", event.flow, target, exc)
            return
        self.sent += 1

    def stop(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()

    def families(self) -> list[Family]:
        return [
            Family.single("flowlabel_fireflies_sent_total", "counter", "Fireflies sent", self.sent),
            Family.single("flowlabel_firefly_send_errors_total", "counter",
                          "Fireflies that could not be sent", self.errors),
        ]
