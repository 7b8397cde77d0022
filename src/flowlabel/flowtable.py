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
from .flow import (
    FLOW_KEY,
    PROTOCOL_NAMES,
    Flow,
    flow_key,
    flow_of_key,
    key_destination,
    key_source,
    packed_text,
)
from .label import decode, encode

__all__ = [
    "ENDED", "FAILED", "IPV4", "REFRESHED", "REJECTED", "STARTED", "UNKNOWN_END",
    "Change", "FlowRecord", "FlowTable", "Plain",
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
    #: The flow packed as the classifier's map keys it (flowlabel.flow.flow_key), as the table holds it.
    key: bytes

    def plain(self) -> Plain:
        flow, key = self.flow, self.key
        start = -1 if self.start_time is None else times.to_microseconds(self.start_time)
        return Plain(flow.protocol, key_source(key), flow.sport, key_destination(key), flow.dport,
                     self.experiment, self.activity, self.label, start, self.application, self.source)

    def as_api(self) -> dict[str, Any]:
        """The flow as the HTTP API lists it."""
        return self.plain().as_api()


class Plain(NamedTuple):
    """A record as plain values: addresses packed, the start in microseconds since 1970 (-1: none)."""

    protocol: str
    src: bytes
    sport: int
    dst: bytes
    dport: int
    experiment: int
    activity: int
    label: int
    start_us: int
    application: str | None
    source: str

    def as_api(self) -> dict[str, Any]:
        """The flow as the HTTP API lists it (made from plain values: a listing of every flow
        need not make a record of each)."""
        return {
            "protocol": self.protocol,
            "src_ip": packed_text(self.src),
            "src_port": self.sport,
            "dst_ip": packed_text(self.dst),
            "dst_port": self.dport,
            "experiment": self.experiment,
            "activity": self.activity,
            "label": self.label,
            "start_time": None if self.start_us < 0 else times.format_microseconds(self.start_us),
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


# A record packed into one integer: the label (20 bits; it carries the experiment and activity),
# the indexes of its application (12) and source (4) names, and its start time (52 bits:
# microseconds since 1970 plus one, 0 for none; enough until 2112). An integer of 88 bits is a
# 40-byte object, the smallest a record fits in; the tuple it stands for took 400.
_APPLICATION_SHIFT, _SOURCE_SHIFT, _START_SHIFT = 20, 32, 36
_LABEL_BITS, _APPLICATION_BITS, _SOURCE_BITS = (1 << 20) - 1, (1 << 12) - 1, (1 << 4) - 1


def _unpack(value: int) -> tuple[int, int, int, int]:
    """label, start (microseconds since 1970, -1 for none), application and source index."""
    return (value & _LABEL_BITS, (value >> _START_SHIFT) - 1, value >> _APPLICATION_SHIFT & _APPLICATION_BITS,
            value >> _SOURCE_SHIFT & _SOURCE_BITS)


class _Names:
    """Strings kept once, as small numbers up to ``limit`` (0 is None, and names beyond the limit)."""

    def __init__(self, limit: int) -> None:
        self._names: list[str | None] = [None]
        self._index: dict[str, int] = {}
        self._limit = limit

    def index(self, name: str | None) -> int:
        if name is None:
            return 0
        found = self._index.get(name)
        if found is None:
            if len(self._names) > self._limit:
                return 0  # senders could make up endless application names
            found = self._index[name] = len(self._names)
            self._names.append(name)
        return found

    def __getitem__(self, index: int) -> str | None:
        return self._names[index]


class FlowTable:
    """The active IPv6 flows, keyed by their 5-tuple as the events give it.

    Each flow is one packed key (flowlabel.flow.FLOW_KEY, the classifier's
    layout, so that the Marker can hold the very same bytes) and one packed
    value: about 200 bytes a flow with the dictionary, where tuples of objects
    took 550. :class:`FlowRecord` objects are made when asked for.
    """

    def __init__(self, draw: Callable[[int, int], int] = encode) -> None:
        self._flows: dict[bytes, int] = {}
        self._draw = draw
        self._applications = _Names(_APPLICATION_BITS)
        self._sources = _Names(_SOURCE_BITS)
        #: Bumped on every change, so that savers can tell whether anything changed.
        self.version = 0

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[FlowRecord]:
        return (self._record(key, value) for key, value in list(self._flows.items()))

    def __contains__(self, flow: object) -> bool:
        return isinstance(flow, Flow) and flow.is_ipv6 and flow_key(flow) in self._flows

    def get(self, flow: Flow) -> FlowRecord | None:
        return self.get_key(flow_key(flow)) if flow.is_ipv6 else None

    def get_key(self, key: bytes) -> FlowRecord | None:
        """The record of the flow with this packed key."""
        value = self._flows.get(key)
        return None if value is None else self._record(key, value)

    def keys(self) -> list[bytes]:
        """The packed keys of the flows now active."""
        return list(self._flows)

    def label_of(self, key: bytes) -> int | None:
        """The label of the flow with this packed key; None if it is not active."""
        value = self._flows.get(key)
        return None if value is None else value & _LABEL_BITS

    def labels(self) -> list[tuple[bytes, int]]:
        """(packed key, label) of every flow now active: what a pass over all flows each period
        needs, without a record (its addresses and times as objects) for each."""
        return [(key, value & _LABEL_BITS) for key, value in self._flows.items()]

    def plain(self, keys: Iterable[bytes] | None = None) -> list[Plain]:
        """Flows (all, or those of ``keys`` still active) as plain values, without making objects."""
        out = []
        flows, names, sources = self._flows, self._applications, self._sources
        unpack_key, unpack = FLOW_KEY.unpack, _unpack
        for key in list(flows) if keys is None else keys:
            value = flows.get(key)
            if value is None:
                continue
            src, dst, sport, dport, proto = unpack_key(key)
            label, start, app, source = unpack(value)
            ids = decode(label)
            out.append(Plain(PROTOCOL_NAMES[proto], src, sport, dst, dport, ids.experiment, ids.activity,
                             label, start, names[app], sources[source] or ""))
        return out

    def _pack(self, label: int, start: datetime | None, application: str | None, source: str) -> int:
        start_us = 0 if start is None else times.to_microseconds(start) + 1
        return (label | self._applications.index(application) << _APPLICATION_SHIFT
                | self._sources.index(source) << _SOURCE_SHIFT | start_us << _START_SHIFT)

    def _record(self, key: bytes, value: int, flow: Flow | None = None) -> FlowRecord:
        label, start, app, source = _unpack(value)
        ids = decode(label)
        return FlowRecord(flow or flow_of_key(key), ids.experiment, ids.activity, label,
                          None if start < 0 else times.from_microseconds(start),
                          self._applications[app], self._sources[source] or "", key)

    def apply(self, event: FlowEvent, source: str) -> Change:
        """Record ``event`` and say what it did."""
        if event.src.version != 6:
            return Change(event, source, IPV4, None, False)
        flow = Flow(event.protocol, event.src, event.dst, event.sport, event.dport)
        key = flow_key(flow)
        flows = self._flows
        if event.state == "end":
            old = flows.pop(key, None)
            if old is None:
                return Change(event, source, UNKNOWN_END, None, False)
            self.version += 1
            return Change(event, source, ENDED, self._record(key, old, flow), True)
        old = flows.get(key)
        if old is None:
            label = self._draw(event.experiment, event.activity)
            start = event.start_time or times.now()
            flows[key] = self._pack(label, start, event.application, source)
            self.version += 1
            record = FlowRecord(flow, event.experiment, event.activity, label, start, event.application,
                                source, key)
            return Change(event, source, STARTED, record, True)
        record = self._record(key, old, flow)
        if record.experiment == event.experiment and record.activity == event.activity:
            return Change(event, source, REFRESHED, record, False)
        # Same flow, new experiment or activity: keep the flow's entropy bits.
        label = encode(event.experiment, event.activity, decode(record.label).entropy)
        record = record._replace(experiment=event.experiment, activity=event.activity, label=label)
        flows[key] = self._pack(label, record.start_time, record.application, record.source)
        self.version += 1
        return Change(event, source, REFRESHED, record, True)

    def discard(self, key: bytes) -> None:
        """Forget the flow with this packed key (the classifier could not take it)."""
        if self._flows.pop(key, None) is not None:
            self.version += 1

    def restore(self, records: Iterable[FlowRecord]) -> int:
        """Add records read from the state file; returns how many were added."""
        count = 0
        flows = self._flows
        for record in records:
            key = record.key
            if key not in flows:
                flows[key] = self._pack(record.label, record.start_time, record.application, record.source)
                count += 1
        if count:
            self.version += 1
        return count
