"""The files that keep the daemon's active flows across restarts: a snapshot and its journals.

The state file (``flows.json`` in the work directory) lists the active flows
with their labels::

    {"version": 1, "saved": "2024-03-28T08:58:48.899646Z",
     "columns": ["protocol", "src_ip", "src_port", "dst_ip", "dst_port",
                 "experiment", "activity", "label", "start_time", "application", "source"],
     "flows": [["tcp", "2001:db8::1", 2345, "2001:db8::2", 5777, 2, 15, 263228,
                "2024-03-28T08:58:48Z", null, "pipe"], ...]}

It is replaced atomically (written to ``flows.json.tmp``, then renamed) and
names the journal generation that continues it (``"journal": 7``; 0 when absent).

Between snapshots every applied batch of changes is appended to the journal,
``flows.journal.<generation>``, as one line (a JSON array) in one ``write()``:
a full row starts or relabels a flow (its start time in microseconds since 1970,
cheaper to write than text), a five-column key
(``["tcp", "2001:db8::1", 2345, "2001:db8::2", 5777]``) removes it. A write that
returned is in the page cache, so a killed daemon loses nothing; only a crash of
the whole host may take the last seconds. A snapshot names the generation being
written when it was taken (replaying all of it on top is exact: every entry is
a whole row or a removal); once it is in place a new generation starts and the
journals before the snapshot's are deleted. At
start the snapshot is read and every journal of its generation or later is
replayed on top of it, in order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterable
from datetime import datetime
from socket import AF_INET6, inet_ntop
from typing import Any, NamedTuple

from . import times
from .flow import FLOW_KEY, PROTOCOL_NAMES, Flow, flow_key
from .flowtable import ENDED, FAILED, Change, FlowRecord, Plain
from .label import decode

__all__ = ["Journal", "Restored", "StateFileError", "StateWriter", "journal_generations", "journal_path",
           "load_state", "remove_journals", "restore_state", "save_state"]

log = logging.getLogger(__name__)

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



# -- the state file ----------------------------------------------------------------------------


class StateFileError(ValueError):
    """The state file cannot be read."""


def _start_time(value: object) -> datetime | None:
    """A row's start time: RFC 3339 text (the snapshot), microseconds since 1970 (the journal), or null."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return times.from_microseconds(value)
    if not isinstance(value, str):
        raise ValueError(f"start_time must be a string, a number or null, got {value!r}")
    return times.parse(value)


def _row(plain: Plain, *, text_time: bool = True) -> list[Any]:
    """A flow's row, in COLUMNS order; the start time as text, or as its microseconds (the journal's,
    which is written for every batch and read only at a restart)."""
    if plain.start_us < 0:
        start: str | int | None = None
    else:
        start = times.format_time(times.from_microseconds(plain.start_us)) if text_time else plain.start_us
    ntop = inet_ntop
    return [plain.protocol, ntop(AF_INET6, plain.src), plain.sport, ntop(AF_INET6, plain.dst), plain.dport,
            plain.experiment, plain.activity, plain.label, start, plain.application, plain.source]


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
    return FlowRecord(flow, experiment, activity, label, _start_time(start), application, source,
                      flow_key(flow))


class StateWriter:
    """Writes a state file a piece at a time; the old file stays until :meth:`commit`.

    Used as a context manager, an uncommitted file is discarded on exit. The
    daemon writes large tables in steps, so that no single step holds up its
    event loop for long.
    """

    def __init__(self, path: str, *, journal: int = 0) -> None:
        self.path = path
        self.count = 0
        self._tmp = path + ".tmp"
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        saved = times.format_time(times.now())
        head = {"version": STATE_VERSION, "saved": saved, "journal": journal, "columns": COLUMNS}
        # The document is written by hand from here on, so "flows" must be its last member.
        self._write(json.dumps(head, separators=(",", ":"))[:-1] + ',"flows":[')

    def _write(self, text: str) -> None:
        view = memoryview(text.encode())
        while view:
            view = view[os.write(self._fd, view) :]

    def write(self, flows: Iterable[Plain]) -> None:
        rows = [_row(plain) for plain in flows]
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


def save_state(path: str, flows: Iterable[Plain], *, durable: bool = False, journal: int = 0) -> int:
    """Replace the state file at ``path`` with ``flows``; returns how many were written."""
    with StateWriter(path, journal=journal) as writer:
        writer.write(flows)
        writer.commit(durable=durable)
    return writer.count


#: What reading one damaged entry can raise: any of them skips the entry, never the start.
_BAD_ENTRY = (ValueError, TypeError, AttributeError, OverflowError, KeyError, IndexError)


def _read_snapshot(path: str) -> tuple[list[FlowRecord], int]:
    """The flows in the state file at ``path`` and the journal generation that continues it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], 0
    except OSError as exc:
        raise StateFileError(f"cannot read the state file {path}: {exc.strerror}") from None
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise StateFileError(f"the state file {path} is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("version") != STATE_VERSION:
        raise StateFileError(f"{path} is not a version {STATE_VERSION} flowlabel state file")
    rows = document.get("flows")
    if not isinstance(rows, list):
        raise StateFileError(f"{path}: 'flows' must be a list")
    generation = document.get("journal", 0)
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise StateFileError(f"{path}: 'journal' must be a generation number")
    records = []
    for i, row in enumerate(rows):
        try:
            records.append(_record(row))
        except _BAD_ENTRY as exc:
            log.warning("state file %s: flows[%d] skipped: %s", path, i, exc)
    return records, generation


def load_state(path: str) -> list[FlowRecord]:
    """The flows in the state file at ``path`` (none if there is no file), without its journal.

    A bad entry is logged and skipped; a file that is not a state file at all
    raises :class:`StateFileError`.
    """
    return _read_snapshot(path)[0]


# -- the journal -------------------------------------------------------------------------------


def journal_path(state_path: str, generation: int) -> str:
    """The journal of ``generation`` beside the state file (``flows.json`` -> ``flows.journal.7``)."""
    return f"{os.path.splitext(state_path)[0]}.journal.{generation}"


def journal_generations(state_path: str) -> list[int]:
    """The generations of the journals beside the state file, oldest first."""
    directory = os.path.dirname(state_path) or "."
    pattern = re.compile(re.escape(os.path.basename(journal_path(state_path, 0))[:-1]) + r"(\d+)\Z")
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for m in map(pattern.match, names) if m)


def _key_row(key: bytes) -> list[Any]:
    src, dst, sport, dport, proto = FLOW_KEY.unpack(key)
    return [PROTOCOL_NAMES[proto], inet_ntop(AF_INET6, src), sport, inet_ntop(AF_INET6, dst), dport]


class Journal:
    """The changes applied since the last snapshot, one line per batch, appended to one file.

    :meth:`append` makes exactly one ``write()``, so a line is whole in the page
    cache or absent; no fsync: the journal is meant to outlive the process, not
    the host.
    """

    def __init__(self, state_path: str, generation: int) -> None:
        self.generation = generation
        self.path = journal_path(state_path, generation)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)

    def append(self, changes: Iterable[Change]) -> None:
        """Record what ``changes`` did to the active flows (nothing for those that changed nothing)."""
        entries: list[list[Any]] = []
        for change in changes:
            if not change.relabel or change.record is None:
                continue
            if change.outcome == ENDED or change.outcome == FAILED:
                entries.append(_key_row(change.record.key))
            else:
                entries.append(_row(change.record.plain(), text_time=False))
        if entries:
            self._write(entries)

    def removed(self, keys: Iterable[bytes]) -> None:
        """Record that the flows with these packed keys are no longer active (the classifier refused them)."""
        entries = [_key_row(key) for key in keys]
        if entries:
            self._write(entries)

    def _write(self, entries: list[list[Any]]) -> None:
        data = (json.dumps(entries, separators=(",", ":")) + "\n").encode()
        written = os.write(self._fd, data)
        if written != len(data):
            # Only a full disk does this; the rest would join the next line and spoil both.
            os.write(self._fd, b"\n")
            raise OSError(f"short write to the journal {self.path} ({written} of {len(data)} bytes)")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _replay(path: str, flows: dict[Flow, FlowRecord]) -> int:
    """Apply the journal at ``path`` to ``flows``; returns how many entries it held."""
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as exc:
        log.warning("cannot read the journal %s: %s", path, exc.strerror)
        return 0
    count = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entries = json.loads(line)
            if not isinstance(entries, list):
                raise ValueError("a line must be a JSON array")
        except (ValueError, RecursionError) as exc:
            # A line cut short by a full disk or a crash of the host; the others stand on their own.
            log.warning("journal %s: line %d skipped: %s", path, number, exc)
            continue
        for entry in entries:
            try:
                if isinstance(entry, list) and len(entry) == 5:
                    protocol, src, sport, dst, dport = entry
                    flows.pop(Flow.of(protocol, src, dst, sport, dport), None)
                else:
                    record = _record(entry)
                    flows[record.flow] = record
                count += 1
            except _BAD_ENTRY as exc:
                log.warning("journal %s: line %d: an entry skipped: %s", path, number, exc)
    return count


class Restored(NamedTuple):
    """What :func:`restore_state` found."""

    records: list[FlowRecord]
    #: The generation for the next journal: above every one on disk.
    next_generation: int
    #: Journal entries replayed on top of the snapshot.
    replayed: int


def restore_state(path: str) -> Restored:
    """The active flows of the last run: the state file at ``path`` plus its journals.

    A state file that cannot be read raises :class:`StateFileError` after
    nothing else; the caller may set it aside and call again, and then every
    journal on disk is replayed onto an empty table.
    """
    records, generation = _read_snapshot(path)
    flows = {record.flow: record for record in records}
    generations = journal_generations(path)
    replayed = 0
    for gen in generations:
        if gen >= generation:
            replayed += _replay(journal_path(path, gen), flows)
    following = max([generation, *generations]) + 1
    return Restored(list(flows.values()), following, replayed)


def remove_journals(path: str, below: int) -> None:
    """Delete the journals of generations before ``below`` (a snapshot now holds their changes)."""
    for gen in journal_generations(path):
        if gen < below:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(journal_path(path, gen))
