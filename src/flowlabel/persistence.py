"""The daemon's active flows on disk: restored at start, journaled as they change, snapshotted.

:class:`Persistence` owns the state file and its journals (their formats are in
:mod:`flowlabel.statefile`): it reads them back at start, appends every applied
batch of changes to the journal, writes a snapshot in steps while the daemon
serves, starts a new journal generation with each snapshot and deletes the
journals a snapshot has made obsolete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable

from .flowtable import Change, FlowRecord, FlowTable
from .metrics import Family
from .statefile import Journal, StateFileError, StateWriter, remove_journals, restore_state, save_state

__all__ = ["Persistence"]

log = logging.getLogger("flowlabel")

#: Flows written to the state file per step; a step takes a few hundred microseconds.
SAVE_STEP = 100
#: The kernel's id of this boot, and where the work directory keeps the one its flows belong to.
BOOT_ID = "/proc/sys/kernel/random/boot_id"
BOOT_ID_FILE = "boot_id"


class Persistence:
    """The state file ``path`` and its journals, kept for ``table``."""

    def __init__(self, path: str, table: FlowTable, interval: float) -> None:
        self.path = path
        self.table = table
        self.interval = interval
        self._journal: Journal | None = None
        self._failing = False
        # Set once the last run's flows are back: only then may the state file be replaced.
        self._restored = False
        self._saved_version = -1
        self._saves = 0
        self._save_errors = 0
        self._save_failing = False
        self._save_seconds = 0.0
        self.previous_boot = False

    # -- start and stop -----------------------------------------------------------------

    def restore(self) -> list[FlowRecord]:
        """The last run's flows, and a journal opened for this run's changes (OSError if it cannot be).

        :attr:`previous_boot` says whether they belong to an earlier boot of the host.
        """
        self.previous_boot = self._boot_changed()
        try:
            restored = restore_state(self.path)
        except StateFileError as exc:
            # Kept aside for inspection: the next save replaces the file.
            broken = self.path + ".broken"
            with contextlib.suppress(OSError):
                os.replace(self.path, broken)
            log.warning("%s; starting with only the flows its journals name (the file is now %s)",
                        exc, broken)
            restored = restore_state(self.path)
        if restored.replayed:
            log.info("%d journaled changes replayed onto the state file", restored.replayed)
        self._journal = Journal(self.path, restored.next_generation)
        return restored.records

    def _boot_changed(self) -> bool:
        """Whether the work directory's boot id names another boot than this one; records this one."""
        path = os.path.join(os.path.dirname(self.path) or ".", BOOT_ID_FILE)
        try:
            with open(BOOT_ID) as f:
                current = f.read().strip()
        except OSError:
            return False  # no way to tell
        try:
            with open(path) as f:
                previous = f.read().strip()
        except OSError:
            previous = current  # the first run, or one before the boot id was kept
        try:
            with open(path + ".tmp", "w") as f:
                f.write(current + "\n")
            os.replace(path + ".tmp", path)
        except OSError as exc:
            log.warning("cannot write %s: %s; a reboot will not be noticed at the next start", path, exc)
        return previous != current

    def restored(self) -> None:
        """The table holds the last run's flows now: from here on the state file may be replaced."""
        self._restored = True
        self._saved_version = self.table.version

    def close(self) -> None:
        """Write the whole table once more, durably, and close the journal."""
        if self._restored:
            self.save(durable=True)
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    # -- the journal ------------------------------------------------------------------------

    def record(self, changes: Iterable[Change]) -> None:
        """Journal an applied batch of changes."""
        if self._journal is not None:
            try:
                self._journal.append(changes)
            except OSError as exc:
                self._journal_error(exc)

    def removed(self, keys: set[bytes]) -> None:
        """Journal flows (packed keys) taken out of the table after their changes were journaled."""
        if self._journal is not None and keys:
            try:
                self._journal.removed(keys)
            except OSError as exc:
                self._journal_error(exc)

    def _journal_error(self, exc: OSError) -> None:
        # Logged once until a snapshot, which holds the changes the journal missed, succeeds.
        if not self._failing:
            self._failing = True
            log.error("cannot write the journal: %s; changes are kept only by the next state-file "
                      "write until it works again", exc)

    def _next_journal(self) -> int:
        """Start a new journal generation for the changes after this instant; returns it."""
        old = self._journal
        assert old is not None
        try:
            self._journal = Journal(self.path, old.generation + 1)
        except OSError as exc:
            self._journal_error(exc)
            return old.generation
        old.close()
        self._failing = False
        return self._journal.generation

    # -- snapshots --------------------------------------------------------------------------

    def save(self, *, durable: bool = False) -> None:
        """Write the whole table at once (at exit, when no more events come)."""
        began = time.perf_counter()
        following = self._journal.generation + 1 if self._journal is not None else 0
        try:
            count = save_state(self.path, self.table.plain(), durable=durable, journal=following)
        except OSError as exc:
            self._save_error(exc)
            return
        remove_journals(self.path, following)
        self._saved(began, count)

    async def save_in_steps(self) -> None:
        """Write a snapshot of the table, letting the loop serve events between steps.

        The snapshot names the current journal and is written while it grows: each
        flow as it is when its step comes (flows that ended meanwhile are left
        out). Replaying all of that journal on top gives the table at the
        journal's end whatever the steps saw, because every journal entry is a
        whole row or a removal and every change made while writing is in it.
        Only once the snapshot is in place does a new journal start and the ones
        before the current go, so that a snapshot that cannot be written leaves
        one journal growing, never journals piling up: at most two exist. One
        step at a time is in memory, never a copy of the whole table.
        """
        assert self._journal is not None
        began = time.perf_counter()
        version = self.table.version
        keys = self.table.keys()
        generation = self._journal.generation
        try:
            with StateWriter(self.path, journal=generation) as writer:
                for i in range(0, len(keys), SAVE_STEP):
                    writer.write(self.table.plain(keys[i : i + SAVE_STEP]))
                    await asyncio.sleep(0)
                writer.commit()
        except OSError as exc:
            self._save_error(exc)
            return
        self._next_journal()
        remove_journals(self.path, generation)
        self._saved(began, writer.count, version)

    def _save_error(self, exc: OSError) -> None:
        # Retried at every interval; logged once until a write works again, counted every time.
        self._save_errors += 1
        if not self._save_failing:
            self._save_failing = True
            log.error("cannot write the state file %s: %s; the journal keeps every change until a "
                      "write works again", self.path, exc)

    def _saved(self, began: float, count: int, version: int | None = None) -> None:
        if self._save_failing:
            self._save_failing = False
            log.info("the state file %s is written again", self.path)
        self._save_seconds = time.perf_counter() - began
        self._saves += 1
        self._saved_version = self.table.version if version is None else version
        log.debug("state file %s: %d flows written in %.1f ms", self.path, count, self._save_seconds * 1000)

    async def save_periodically(self) -> None:
        interval = self.interval
        while True:
            await asyncio.sleep(interval)
            if self.table.version != self._saved_version:
                await self.save_in_steps()
                # Keep the writes under a tenth of the time, however large the table.
                interval = max(self.interval, self._save_seconds * 10)

    def families(self) -> list[Family]:
        return [
            Family.single("flowlabel_state_saves_total", "counter", "Writes of the state file", self._saves),
            Family.single("flowlabel_state_save_errors_total", "counter",
                          "State-file writes that failed (the journal keeps the changes)", self._save_errors),
            Family.single("flowlabel_state_save_seconds", "gauge", "How long the last state-file write took",
                          self._save_seconds),
        ]
