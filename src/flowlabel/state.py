"""The daemon's record of active flows, and the file that keeps it across restarts.

:class:`FlowTable` turns each flow event into a :class:`Change` (what happened
to which flow, with which label) and is the one place where a flow's label is
chosen: the entropy bits are drawn when a flow starts and kept while it lives,
also when a later event changes its experiment or activity.

The state file (``flows.json`` in the work directory) lists the active flows
with their labels::

    {"version": 1, "saved": "2024-03-28T08:58:48.899646Z",
     "columns": ["protocol", "src_ip", "src_port", "dst_ip", "dst_port",
                 "experiment", "activity", "label", "start_time", "application", "source"],
     "flows": [["tcp", "2001:db8::1", 2345, "2001:db8::2", 5777, 2, 15, 263228,
                "2024-03-28T08:58:48Z", null, "pipe"], ...]}

It is replaced atomically (written to ``flows.json.tmp``, then renamed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from socket import AF_INET6, inet_ntop
from typing import Any, Callable, NamedTuple

from .events import FlowEvent
from .flow import Flow, IPAddress
from .label import decode, encode

__all__ = [
    "ENDED",
    "FAILED",
    "IPV4",
    "REFRESHED",
    "REJECTED",
    "STARTED",
    "UNKNOWN_END",
    "Change",
    "FlowRecord",
    "FlowTable",
    "StateFileError",
    "StateWriter",
    "load_state",
    "save_state",
]

log = logging.getLogger(__name__)

# What became of an event; these are the ``outcome`` label values of the metrics.
STARTED = "started"  # a new flow, now marked
REFRESHED = "refreshed"  # start or ongoing for a flow already marked
ENDED = "ended"  # the flow is no longer marked
UNKNOWN_END = "unknown_end"  # an end for a flow that was not marked
IPV4 = "ipv4_ignored"  # IPv4 has no flow label: not marked
FAILED = "failed"  # the classifier refused the flow (its map is full)
REJECTED = "rejected"  # the input was not a valid event

STATE_VERSION = 1
COLUMNS = (
    "protocol",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "experiment",
    "activity",
    "label",
    "start_time",
    "application",
    "source",
)


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
            "src_ip": _address(flow.src),
            "src_port": flow.sport,
            "dst_ip": _address(flow.dst),
            "dst_port": flow.dport,
            "experiment": self.experiment,
            "activity": self.activity,
            "label": self.label,
            "start_time": _format_time(self.start_time),
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
                event.start_time or datetime.now(timezone.utc),
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


# -- the state file ----------------------------------------------------------------------------


class StateFileError(ValueError):
    """The state file cannot be read."""


def _format_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.utcoffset():
        value = value.astimezone(timezone.utc)
    return value.isoformat().replace("+00:00", "Z")


def _address(value: IPAddress) -> str:
    # inet_ntop is about ten times faster than str() of an ipaddress object.
    if value.version == 6:
        return inet_ntop(AF_INET6, value.packed)
    return str(value)


def _parse_time(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"start_time must be a string or null, got {value!r}")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"start_time has no UTC offset: {value!r}")
    return parsed


def _row(record: FlowRecord) -> list[Any]:
    flow = record.flow
    return [
        flow.protocol,
        _address(flow.src),
        flow.sport,
        _address(flow.dst),
        flow.dport,
        record.experiment,
        record.activity,
        record.label,
        _format_time(record.start_time),
        record.application,
        record.source,
    ]


def _record(row: object) -> FlowRecord:
    if not isinstance(row, list) or len(row) != len(COLUMNS):
        raise ValueError(f"expected a list of {len(COLUMNS)} values")
    protocol, src, sport, dst, dport, experiment, activity, label, start, application, source = row
    flow = Flow.of(protocol, src, dst, sport, dport)
    if not flow.is_ipv6:
        raise ValueError("not an IPv6 flow")
    decoded = decode(label)
    if (decoded.experiment, decoded.activity) != (experiment, activity):
        raise ValueError(f"label {label} does not carry experiment {experiment} and activity {activity}")
    if application is not None and not isinstance(application, str):
        raise ValueError("application must be a string or null")
    if not isinstance(source, str):
        raise ValueError("source must be a string")
    return FlowRecord(flow, experiment, activity, label, _parse_time(start), application, source)


class StateWriter:
    """Writes a state file a piece at a time; the old file stays until :meth:`commit`.

    Used as a context manager, an uncommitted file is discarded on exit. The
    daemon writes large tables in steps, so that no single step holds up its
    event loop for long.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0
        self._tmp = path + ".tmp"
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        saved = _format_time(datetime.now(timezone.utc))
        head = {"version": STATE_VERSION, "saved": saved, "columns": COLUMNS}
        # The document is written by hand from here on, so "flows" must be its last member.
        self._write(json.dumps(head, separators=(",", ":"))[:-1] + ',"flows":[')

    def _write(self, text: str) -> None:
        view = memoryview(text.encode())
        while view:
            view = view[os.write(self._fd, view) :]

    def write(self, records: Iterable[FlowRecord]) -> None:
        rows = [_row(record) for record in records]
        if not rows:
            return
        text = json.dumps(rows, separators=(",", ":"))[1:-1]
        self._write(text if not self.count else "," + text)
        self.count += len(rows)

    def commit(self, *, durable: bool = False) -> None:
        """Finish the file and put it in place of the old one.

        ``durable`` also flushes the file and its directory to disk (slow; meant
        for the last save before exit). Without it the file survives a restart of
        the daemon, but a power loss may take the last seconds with it.
        """
        self._write("]}\n")
        if durable:
            os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        os.replace(self._tmp, self.path)
        if durable:
            dir_fd = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)

    def __enter__(self) -> StateWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def save_state(path: str, records: Iterable[FlowRecord], *, durable: bool = False) -> int:
    """Replace the state file at ``path`` with ``records``; returns how many were written."""
    with StateWriter(path) as writer:
        writer.write(records)
        writer.commit(durable=durable)
    return writer.count


def load_state(path: str) -> list[FlowRecord]:
    """The flows in the state file at ``path`` (none if there is no file).

    A bad entry is logged and skipped; a file that is not a state file at all
    raises :class:`StateFileError`.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StateFileError(f"cannot read the state file {path}: {exc.strerror}") from None
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise StateFileError(f"the state file {path} is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("version") != STATE_VERSION:
        raise StateFileError(f"{path} is not a version {STATE_VERSION} flowlabel state file")
    rows = document.get("flows")
    if not isinstance(rows, list):
        raise StateFileError(f"{path}: 'flows' must be a list")
    records = []
    for i, row in enumerate(rows):
        try:
            records.append(_record(row))
        except (ValueError, TypeError) as exc:
            log.warning("state file %s: flows[%d] skipped: %s", path, i, exc)
    return records
