"""The daemon's flow table and its state file."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import pytest

from flowlabel.events import FlowEvent
from flowlabel.flowtable import ENDED, IPV4, REFRESHED, STARTED, UNKNOWN_END, FlowTable
from flowlabel.label import decode
from flowlabel.persistence import Persistence
from flowlabel.statefile import (
    Journal,
    StateFileError,
    StateWriter,
    journal_generations,
    journal_path,
    load_state,
    remove_journals,
    restore_state,
    save_state,
)

WHEN = datetime(2024, 3, 28, 8, 58, 48, tzinfo=timezone.utc)


def event(state: str, sport: int = 2345, experiment: int = 2, activity: int = 15,
          src: str = "2001:db8::1", dst: str = "2001:db8::2") -> FlowEvent:
    return FlowEvent.of(state, "tcp", src, dst, sport, 5777, experiment, activity, start_time=WHEN)


def test_start_refresh_end() -> None:
    table = FlowTable()
    started = table.apply(event("start"), "pipe")
    assert started.outcome == STARTED and started.relabel
    assert started.record is not None and decode(started.record.label)[:2] == (2, 15)
    assert started.record.start_time == WHEN and started.record.source == "pipe"
    again = table.apply(event("ongoing"), "api")
    assert again.outcome == REFRESHED and not again.relabel and again.record == started.record
    ended = table.apply(event("end"), "pipe")
    assert ended.outcome == ENDED and ended.record == started.record and len(table) == 0
    assert table.apply(event("end"), "pipe").outcome == UNKNOWN_END


def test_a_new_activity_keeps_the_entropy() -> None:
    table = FlowTable()
    first = table.apply(event("start"), "pipe").record
    change = table.apply(event("start", activity=3), "pipe")
    assert change.outcome == REFRESHED and change.relabel and change.record is not None
    assert first is not None
    assert decode(change.record.label) == (2, 3, decode(first.label).entropy)


def test_ipv4_is_not_kept() -> None:
    table = FlowTable()
    change = table.apply(event("start", src="192.0.2.1", dst="192.0.2.2"), "pipe")
    assert change.outcome == IPV4 and change.record is None and len(table) == 0


def test_the_version_moves_only_on_changes() -> None:
    table = FlowTable()
    table.apply(event("start"), "pipe")
    version = table.version
    table.apply(event("start"), "pipe")
    table.apply(event("end", sport=1), "pipe")
    assert table.version == version
    table.apply(event("end"), "pipe")
    assert table.version > version


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    table = FlowTable()
    for port in range(1, 300):
        table.apply(event("start", sport=port), "pipe")
    path = str(tmp_path / "flows.json")
    assert save_state(path, table.plain()) == 299
    loaded = load_state(path)
    assert loaded == list(table)
    restored = FlowTable()
    assert restored.restore(loaded) == 299
    assert restored.restore(loaded) == 0


def test_no_file_means_no_flows(tmp_path: Path) -> None:
    assert load_state(str(tmp_path / "missing.json")) == []


def test_bad_entries_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    table = FlowTable()
    table.apply(event("start"), "pipe")
    path = tmp_path / "flows.json"
    save_state(str(path), table.plain())
    document = json.loads(path.read_text())
    good = document["flows"][0]
    document["flows"] = [
        good,
        ["tcp"],
        [*good[:7], good[7] ^ 1 << 10, *good[8:]],  # a label that does not carry its IDs
        ["tcp", "192.0.2.1", 1, "192.0.2.2", 2, *good[5:]],
        [*good[:8], "yesterday", *good[9:]],
        [None, *good[1:]],  # a protocol that is not a string
        [*good[:8], 253402300800000000, *good[9:]],  # a start beyond the year 9999
    ]
    path.write_text(json.dumps(document))
    assert load_state(str(path)) == list(table)
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) == 6


def test_a_state_file_nested_beyond_reason_is_not_a_state_file(tmp_path: Path) -> None:
    path = tmp_path / "flows.json"
    path.write_text("[" * 100_000)
    with pytest.raises(StateFileError, match="not valid JSON"):
        load_state(str(path))


@pytest.mark.parametrize("text", ["{not json", "[]", '{"version": 99, "flows": []}', '{"version": 1}'])
def test_a_file_that_is_not_a_state_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "flows.json"
    path.write_text(text)
    with pytest.raises(StateFileError):
        load_state(str(path))


def test_an_unfinished_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = str(tmp_path / "flows.json")
    table = FlowTable()
    table.apply(event("start"), "pipe")
    save_state(path, table.plain())
    before = Path(path).read_text()
    with StateWriter(path) as writer:
        writer.write(table.plain())
    assert Path(path).read_text() == before
    assert not Path(path + ".tmp").exists()


def test_written_in_steps_is_one_document(tmp_path: Path) -> None:
    table = FlowTable()
    for port in range(1, 11):
        table.apply(event("start", sport=port), "pipe")
    records = list(table)
    plain = table.plain()
    path = str(tmp_path / "flows.json")
    with StateWriter(path) as writer:
        for i in range(0, len(plain), 3):
            writer.write(plain[i : i + 3])
        writer.write([])
        writer.commit(durable=True)
    assert load_state(path) == records


# -- the journal -------------------------------------------------------------------------------


def test_the_journal_carries_the_changes_after_the_snapshot(tmp_path: Path) -> None:
    path = str(tmp_path / "flows.json")
    table = FlowTable()
    for port in range(1, 6):
        table.apply(event("start", sport=port), "pipe")
    save_state(path, table.plain(), journal=3)
    journal = Journal(path, 3)
    # One batch: a new flow, an end, a relabel; then a start and an end of the same flow.
    journal.append([table.apply(event("start", sport=6), "api"), table.apply(event("end", sport=1), "pipe"),
                    table.apply(event("start", sport=2, activity=9), "pipe")])
    journal.append([table.apply(event("start", sport=7), "pipe"), table.apply(event("end", sport=7), "pipe")])
    journal.append([table.apply(event("start", sport=3), "pipe")])  # changes nothing: not written
    journal.close()
    assert len(Path(journal.path).read_text().splitlines()) == 2
    restored = restore_state(path)
    assert sorted(restored.records) == sorted(table)
    assert restored.replayed == 5 and restored.next_generation == 4


def test_journals_of_older_generations_are_ignored_and_newer_ones_replayed_in_order(tmp_path: Path) -> None:
    path = str(tmp_path / "flows.json")
    table = FlowTable()
    started = table.apply(event("start", sport=1), "pipe")
    ended = table.apply(event("end", sport=1), "pipe")
    save_state(path, [], journal=2)
    old = Journal(path, 1)
    old.append([started])  # already in the snapshot's past
    old.close()
    for generation, change in ((2, started), (3, ended), (4, started)):
        j = Journal(path, generation)
        j.append([change])
        j.close()
    assert journal_generations(path) == [1, 2, 3, 4]
    restored = restore_state(path)
    assert restored.records == [started.record] and restored.next_generation == 5
    remove_journals(path, 4)
    assert journal_generations(path) == [4]


def test_a_torn_journal_line_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "flows.json")
    table = FlowTable()
    journal = Journal(path, 1)
    journal.append([table.apply(event("start", sport=1), "pipe")])
    journal.close()
    with open(journal_path(path, 1), "a") as f:
        f.write('[["tcp","2001:db8::1",2,"2001:db8::2",5777,2,15,26')  # the write a crash cut short
    restored = restore_state(path)
    assert restored.records == list(table)
    assert any("line 2 skipped" in r.getMessage() for r in caplog.records)


def test_damaged_journal_entries_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "flows.json")
    table = FlowTable()
    journal = Journal(path, 1)
    journal.append([table.apply(event("start", sport=1), "pipe")])
    journal.close()
    good = json.loads(Path(journal_path(path, 1)).read_text())[0]
    with open(journal_path(path, 1), "a") as f:
        f.write(json.dumps([[1, "2001:db8::1", 1, "2001:db8::2", 2]]) + "\n")  # an end, protocol a number
        f.write(json.dumps([[*good[:8], 10**20, *good[9:]]]) + "\n")  # a start time out of range
    restored = restore_state(path)
    assert restored.records == list(table)
    assert len([r for r in caplog.records if "an entry skipped" in r.getMessage()]) == 2


def test_removed_flows_are_journaled(tmp_path: Path) -> None:
    path = str(tmp_path / "flows.json")
    table = FlowTable()
    change = table.apply(event("start", sport=1), "pipe")
    journal = Journal(path, 1)
    journal.append([change])
    assert change.record is not None
    journal.removed({change.record.key})
    journal.close()
    assert restore_state(path).records == []


def test_snapshots_that_cannot_be_written_leave_one_journal_growing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "flows.json"
    table = FlowTable()
    persistence = Persistence(str(path), table, interval=1.0)
    persistence.restore()
    persistence.restored()
    blocker = tmp_path / "flows.json.tmp"
    blocker.mkdir()  # the snapshot's temporary file cannot be created (root ignores modes)
    with caplog.at_level(logging.INFO, logger="flowlabel"):
        for port in range(1, 41):
            persistence.record([table.apply(event("start", sport=port), "pipe")])
            asyncio.run(persistence.save_in_steps())
            persistence.save()
        failed = [r for r in caplog.records if "cannot write the state file" in r.getMessage()]
        assert len(failed) == 1  # once, not once per attempt
        assert len(journal_generations(str(path))) == 1  # one journal, growing
        errors = {f.name: f.samples for f in persistence.families()}["flowlabel_state_save_errors_total"]
        assert errors[0][1] == 80
        assert sorted(restore_state(str(path)).records) == sorted(table)  # nothing lost meanwhile
        blocker.rmdir()
        for port in range(41, 45):
            persistence.record([table.apply(event("start", sport=port), "pipe")])
            asyncio.run(persistence.save_in_steps())
            assert len(journal_generations(str(path))) <= 2
    assert any("is written again" in r.getMessage() for r in caplog.records)
    persistence.close()
    assert sorted(restore_state(str(path)).records) == sorted(table)
