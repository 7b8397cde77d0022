"""Fireflies for the TCP connections that site rules mark, so that collectors see them too.

Nobody announces these flows: the classifier marks them by rule. For the rules
with ``fireflies``, the kernel tells when a TCP connection of this host is
established or closes (bpf/sockets.bpf.c, asked to report both); a connection
the first matching rule marks, and that is not an announced flow (which has
fireflies of its own), gets a start firefly then, and an end firefly when it
closes. Connections established before the daemon started are not seen.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import TYPE_CHECKING, Callable

from . import times
from .bpf.ext import extension
from .errors import MarkerError
from .events import FlowEvent
from .flow import Flow, flow_key
from .metrics import Family
from .rules import Rule, first_match

if TYPE_CHECKING:
    from .backends.firefly import FireflyBackend
    from .bpf.sockets import SocketEvent, SocketWatch

__all__ = ["RuleFireflies"]

log = logging.getLogger(__name__)

TCP = 6


class RuleFireflies:
    """Start and end fireflies, through ``backend``, for connections that ``rules`` mark.

    ``announced`` tells whether a flow (its packed key, as the connection leaves
    this host) is an announced one.
    """

    def __init__(self, rules: list[Rule], backend: FireflyBackend,
                 announced: Callable[[bytes], bool]) -> None:
        self.rules = rules
        self.backend = backend
        self.announced = announced
        self.sent = {"start": 0, "end": 0}
        self.watch: SocketWatch | None = None
        self._hash = extension()[1].flowlabel_filter_hash
        #: The start of every connection with a start firefly and no end yet, by its key.
        self._open: dict[bytes, FlowEvent] = {}

    def start(self) -> None:
        """Watch the kernel's socket events; MarkerError where they cannot be had."""
        from .bpf.sockets import SocketWatch

        self.watch = SocketWatch(report_established=True)

    async def run(self) -> None:
        """Turn socket events into fireflies until cancelled."""
        watch = self.watch
        if watch is None:
            return
        loop = asyncio.get_running_loop()
        loop.add_reader(watch.fd, lambda: self.handle(watch.take()))
        try:
            await asyncio.Event().wait()
        finally:
            loop.remove_reader(watch.fd)

    def handle(self, events: list[SocketEvent]) -> None:
        for event in events:
            local, remote = ipaddress.IPv6Address(event.local), ipaddress.IPv6Address(event.remote)
            key_flow = Flow("tcp", local, remote, event.local_port, event.remote_port)
            key = flow_key(key_flow)
            if not event.established:
                started = self._open.pop(key, None)
                if started is not None:
                    self._send(started._replace(state="end", end_time=times.now()))
                continue
            n = first_match(self.rules, TCP, local, remote, event.local_port, event.remote_port)
            if n is None or not self.rules[n].fireflies or self.announced(key):
                continue
            ids = self.rules[n].ids_of(int(self._hash(key)))
            if ids is None:  # the rule leaves the connection alone
                continue
            started = FlowEvent("start", "tcp", local, remote, event.local_port, event.remote_port, ids[0],
                                ids[1], times.now(), None, None)
            self._open[key] = started
            self._send(started)

    def _send(self, event: FlowEvent) -> None:
        self.backend.send(event)
        self.sent[event.state] += 1

    def stop(self) -> None:
        """End what is open (the daemon stops: the marking does), and stop watching."""
        for started in self._open.values():
            self._send(started._replace(state="end", end_time=times.now()))
        self._open.clear()
        if self.watch is not None:
            self.watch.close()
            self.watch = None

    def families(self) -> list[Family]:
        return [Family("flowlabel_rule_fireflies_total", "counter",
                       "Fireflies sent for connections that site rules mark, by state",
                       [((("state", state),), count) for state, count in sorted(self.sent.items())])]


def start_rule_fireflies(rules: list[Rule], backend: FireflyBackend | None,
                         announced: Callable[[bytes], bool]) -> RuleFireflies | None:
    """A running :class:`RuleFireflies` when some rule asks for fireflies; None when none does, or
    (with a warning that says why) when they cannot be sent."""
    if not any(rule.fireflies and rule.marks for rule in rules):
        return None
    if backend is None:
        log.warning("site rules ask for fireflies, but there is no backends.firefly to send them")
        return None
    sender = RuleFireflies(rules, backend, announced)
    try:
        sender.start()
    except MarkerError as exc:
        log.warning("no fireflies for the connections site rules mark: %s", exc)
        return None
    return sender
