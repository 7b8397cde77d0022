"""The daemon's record of active flows.

:class:`FlowTable` turns each flow event into a :class:`Change` (what happened
to which flow, with which label) and is the one place where a flow's label is
chosen: the entropy bits are drawn when a flow starts and kept while it lives,
also when a later event changes its experiment or activity.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, Callable, NamedTuple

from . import times
from .events import FlowEvent
from .flow import Flow, address_text
from .label import decode, encode

__all__ = [
    "ENDED", "FAILED", "IPV4", "REFRESHED", "REJECTED", "STARTED", "UNKNOWN_END",
    "Change", "FlowRecord", "FlowTable",
]

# What became of an event; these are the ``outcome`` label values of the metrics.
STARTED = "started"  # a new flow, now marked
REFRESHED = "refreshed"  # start or ongoing for a flow already marked
ENDED = "ended"  # the flow is no longer marked
UNKNOWN_END = "unknown_end"  # an end for a flow that was not marked
IPV4 = "ipv4_ignored"  # IPv4 has no flow label: not marked
FAILED = "failed"  # the classifier refused the flow (its map is full)
REJECTED = "rejected"  # the input was not a valid event


class FlowRecord(NamedTuple):
    """An active flow as the daemon keeps it."""

    flow: Flow
    experiment: int
    activity: int
    label: int
    start_time: datetime | None
    application: str | None
    source: str

    def as_api(self) -> dict[str, Any]:
        """The flow as the HTTP API lists it."""
        flow = self.flow
        return {
            "protocol": flow.protocol,
            "src_ip": address_text(flow.src),
            "src_port": flow.sport,
            "dst_ip": address_text(flow.dst),
            "dst_port": flow.dport,
            "experiment": self.experiment,
            "activity": self.activity,
            "label": self.label,
            "start_time": None if self.start_time is None else times.format_time(self.start_time),
            "application": self.application,
            "source": self.source,
        }


class Change(NamedTuple):
    """What one event did. ``record`` is the flow's record (after a start, before an end).

    ``relabel`` says whether the classifier's map needs a write for this flow.
    """

    event: FlowEvent
    source: str
    outcome: str
    record: FlowRecord | None
    relabel: bool


class FlowTable:
    """The active flows, keyed by their 5-tuple as the events give it."""

    def __init__(self, draw: Callable[[int, int], int] = encode) -> None:
        self._flows: dict[Flow, FlowRecord] = {}
        self._draw = draw
        #: Bumped on every change, so that savers can tell whether anything changed.
        self.version = 0

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[FlowRecord]:
        return iter(list(self._flows.values()))

    def __contains__(self, flow: object) -> bool:
        return flow in self._flows

    def get(self, flow: Flow) -> FlowRecord | None:
        return self._flows.get(flow)

    def apply(self, event: FlowEvent, source: str) -> Change:
        """Record ``event`` and say what it did."""
        if event.src.version != 6:
            return Change(event, source, IPV4, None, False)
        flow = Flow(event.protocol, event.src, event.dst, event.sport, event.dport)
        if event.state == "end":
            old = self._flows.pop(flow, None)
            if old is None:
                return Change(event, source, UNKNOWN_END, None, False)
            self.version += 1
            return Change(event, source, ENDED, old, True)
        old = self._flows.get(flow)
        if old is None:
            record = FlowRecord(
                flow,
                event.experiment,
                event.activity,
                self._draw(event.experiment, event.activity),
                event.start_time or times.now(),
                event.application,
                source,
            )
            self._flows[flow] = record
            self.version += 1
            return Change(event, source, STARTED, record, True)
        if old.experiment == event.experiment and old.activity == event.activity:
            return Change(event, source, REFRESHED, old, False)
        # Same flow, new experiment or activity: keep the flow's entropy bits.
        label = encode(event.experiment, event.activity, decode(old.label).entropy)
        record = old._replace(experiment=event.experiment, activity=event.activity, label=label)
        self._flows[flow] = record
        self.version += 1
        return Change(event, source, REFRESHED, record, True)

    def discard(self, flow: Flow) -> None:
        """Forget ``flow`` (the classifier could not take it)."""
        if self._flows.pop(flow, None) is not None:
            self.version += 1

    def restore(self, records: Iterable[FlowRecord]) -> int:
        """Add records read from the state file; returns how many were added."""
        count = 0
        for record in records:
            if record.flow not in self._flows:
                self._flows[record.flow] = record
                count += 1
        if count:
            self.version += 1
        return count
