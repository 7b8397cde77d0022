"""Helpers for the BPF_PROG_TEST_RUN tests: a loaded classifier with bookkeeping.

The tests load the object shipped in the installed package, or the one named by
``FLOWLABEL_MARKER_OBJECT`` (for trying a freshly compiled bpf/marker.bpf.c).
"""

from __future__ import annotations

import os
from typing import NamedTuple

from packets import FlowKey, kernel_refuses

from flowlabel.errors import MarkerError
from flowlabel.marker import Program, TestRun

OBJECT: str | None = os.environ.get("FLOWLABEL_MARKER_OBJECT") or None


class Outcome(NamedTuple):
    run: TestRun
    counted: dict[str, int]  # counters that moved, and by how much


class Classifier:
    """A loaded program plus bookkeeping: flows added by a test are removed after it."""

    def __init__(self, program: Program, l3: bool) -> None:
        self.program = program
        self.l3 = l3
        self._keys: set[bytes] = set()

    def add(self, key: FlowKey, label: int) -> None:
        raw = self.program.flows.key(key.proto, key.saddr, key.daddr, key.sport, key.dport)
        self.program.flows.put(raw, label)
        self._keys.add(raw)

    def remove(self, key: FlowKey) -> None:
        raw = self.program.flows.key(key.proto, key.saddr, key.daddr, key.sport, key.dport)
        self.program.flows.delete(raw)
        self._keys.discard(raw)

    def clear(self) -> None:
        for raw in self._keys:
            self.program.flows.delete(raw)
        self._keys.clear()

    def run(self, data: bytes) -> Outcome:
        """One test run, and the counters it moved."""
        before = self.program.counters()
        run = self.program.test_run(data)
        after = self.program.counters()
        moved = {name: after[name] - before[name] for name in after if after[name] != before[name]}
        return Outcome(run, moved)

    def refused(self, data: bytes) -> bool:
        """True if the kernel rejects ``data`` as test input (and nothing was counted)."""
        before = self.program.counters()
        try:
            self.program.test_run(data)
        except MarkerError:
            assert kernel_refuses(data) is not False, f"unexpected refusal of {len(data)} bytes"
            assert self.program.counters() == before
            return True
        return False
