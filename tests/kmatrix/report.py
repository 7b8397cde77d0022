"""The matrix's results: junit files read back into kernel x test group cells."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Cell:
    """What one test group did on one kernel."""

    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)  # why tests were skipped
    failures: list[str] = field(default_factory=list)  # names of failed tests

    def __str__(self) -> str:
        parts = [f"{self.outcomes[k]} {k}" for k in ("passed", "failed", "skipped") if self.outcomes[k]]
        text = ", ".join(parts) or "no tests"
        if self.reasons:
            text += " (" + "; ".join(reason for reason in self.reasons) + ")"
        return text


@dataclass
class Result:
    """One kernel of the matrix: its ABI, exit status, ``flowlabel check`` and test cells."""

    name: str
    abi: str
    status: int
    seconds: float
    check: str
    cells: dict[str, Cell]
    bench: dict[str, Any] | None = None  # bench_classifier.py's JSON, when the run had --bench


def group_of(classname: str) -> str:
    """``tests.kernel.test_classifier`` -> ``kernel``."""
    parts = classname.split(".")
    return parts[1] if parts[0] == "tests" and len(parts) > 2 else parts[0]


def read_junit(path: Path) -> dict[str, Cell]:
    cells: dict[str, Cell] = {}
    if not path.exists():
        return cells
    for case in ET.parse(path).getroot().iter("testcase"):
        cell = cells.setdefault(group_of(case.get("classname", "")), Cell())
        skipped = case.find("skipped")
        if case.find("failure") is not None or case.find("error") is not None:
            cell.outcomes["failed"] += 1
            cell.failures.append(f"{case.get('classname')}::{case.get('name')}")
        elif skipped is not None:
            cell.outcomes["skipped"] += 1
            cell.reasons[skipped.get("message", "").removeprefix("Skipped: ")] += 1
        else:
            cell.outcomes["passed"] += 1
    return cells


def read_bench(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


#: The classifier benchmark's cases, in the order of its own table.
BENCH_CASES = ("hit", "hit_written", "hit_cold_cache", "miss", "miss_filter_set", "non_ipv6", "floor_hit")


def bench_table(results: list[Result]) -> str:
    """Each kernel's BPF_PROG_TEST_RUN figures: the marker's time beyond the empty program's, and
    its ratio to it (median). Under ``--icount`` a nanosecond is one instruction executed."""
    benched = [r for r in results if r.bench]
    if not benched:
        return ""
    head = ["kernel", "empty ns", *BENCH_CASES, "xlated bytes"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in benched:
        assert r.bench is not None
        figures, empty = r.bench["results"], r.bench["empty_ns"]
        cells = [f"+{figures[c]['ns'] - empty:g} ({figures[c]['ratio']:.2f}x)" if c in figures else "-"
                 for c in BENCH_CASES]
        rows.append("| " + " | ".join([r.abi, f"{empty:g}", *cells, str(r.bench["program"]["xlated_bytes"])])
                    + " |")
    title = "The classifier per kernel (BPF_PROG_TEST_RUN): ns beyond the empty program (ratio to it)"
    return f"\n## {title}\n\n" + "\n".join(rows) + "\n"


def attach_path(check: str) -> str:
    for line in check.splitlines():
        if line.startswith("attach"):
            return "TCX" if line.split(None, 1)[1].startswith("TCX") else "tc"
    return "?"


def socket_tracking(check: str) -> str:
    """How the daemon's ``socketTracking: auto`` tracks TCP sockets here: events or polling."""
    for line in check.splitlines():
        if line.startswith("sockets"):
            return line.split(None, 1)[1].split(":", 1)[0]
    return "?"


def markdown(results: list[Result], groups: list[str]) -> str:
    """The kernel x group table, then each kernel's ``flowlabel check`` output."""
    head = ["kernel", "attach", "sockets", "check", *groups]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        check_ok = "ok" if r.check.rstrip().endswith("can run the flowlabel marker") else "failed"
        cells = [str(r.cells.get(g, "not run")) for g in groups]
        row = [f"{r.name} ({r.abi})", attach_path(r.check), socket_tracking(r.check), check_ok, *cells]
        rows.append("| " + " | ".join(row) + " |")
    text = "\n".join(rows) + "\n" + bench_table(results)
    for r in results:
        text += f"\n### `flowlabel check` on {r.abi}\n\n```\n{r.check.rstrip()}\n```\n"
        failed = [name for cell in r.cells.values() for name in cell.failures]
        if failed:
            text += "\nFailed:\n" + "".join(f"- `{name}`\n" for name in failed)
    return text


def write(results: list[Result], groups: list[str], out: Path) -> str:
    text = markdown(results, groups)
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps([
        {"name": r.name, "abi": r.abi, "status": r.status, "seconds": round(r.seconds),
         "check": r.check, "groups": {g: dict(c.outcomes) | {"skip reasons": dict(c.reasons),
                                                            "failed tests": c.failures}
                                      for g, c in r.cells.items()},
         "bench_classifier": r.bench}
        for r in results], indent=1))
    return text
