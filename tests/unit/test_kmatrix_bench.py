"""The kernel matrix's benchmark mode: what a guest is told to run, how qemu counts, what the report says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kmatrix"))

import guest
import matrix
import report
from debian import Kernel


def test_bench_only_runs_the_benchmark_and_keeps_its_status(tmp_path: Path) -> None:
    script = matrix.command(tmp_path, [], [], bench=True)
    assert "-m pytest" not in script
    arguments = " ".join(matrix.BENCH_ARGS)
    assert f"bench_classifier.py {arguments} --json {tmp_path}/{matrix.BENCH_JSON}" in script
    assert "|| status=$?" in script.splitlines()[-3]
    assert script.splitlines()[-1] == "exit $status"


def test_tests_without_bench_run_no_benchmark(tmp_path: Path) -> None:
    script = matrix.command(tmp_path, ["kernel"], ["-k", "x"], bench=False)
    assert "-m pytest" in script and "tests/kernel" in script and "-k x" in script
    assert "bench_classifier" not in script


def test_a_failing_step_fails_the_script(tmp_path: Path) -> None:
    # The script's own lines after the set-up, with each step replaced by one that fails.
    script = matrix.command(tmp_path, ["kernel"], [], bench=True)
    body = [line for line in script.splitlines() if line.startswith(("status=", "sync", "exit"))]
    step = next(line for line in script.splitlines() if "bench_classifier.py" in line)
    failing = "\n".join([body[0], "false " + step[step.index("||"):], *body[1:]])
    assert subprocess.run(["sh", "-c", failing], check=False).returncode == 1


def _qemu_args(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **options: Any) -> list[str]:
    seen: list[list[str]] = []
    monkeypatch.setattr(guest, "tool", lambda name, package: name)
    monkeypatch.setattr(guest, "initramfs", lambda kernel, cache: tmp_path / "initrd")
    monkeypatch.setattr(guest.subprocess, "run", lambda args, **kw: seen.append(args))
    kernel = Kernel("6.1.0-57-amd64", tmp_path / "vmlinuz", tmp_path / "modules")
    status = guest.boot(kernel, tmp_path, tmp_path / "run", "true", **options)
    assert status == guest.NO_STATUS  # nothing ran, so no exit status came back
    return seen[0]


def test_icount_makes_the_clock_count_instructions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    args = _qemu_args(monkeypatch, tmp_path, icount=True)
    assert args[args.index("-icount") + 1] == "shift=0,sleep=off"
    assert "-icount" not in _qemu_args(monkeypatch, tmp_path)


def _bench(hit_ns: float, empty_ns: float) -> dict[str, Any]:
    results = {case: {"ns": hit_ns, "ratio": hit_ns / empty_ns, "ratio_min": 1.0, "ratio_max": 9.0}
               for case in report.BENCH_CASES if case != "floor_hit"}
    return {"empty_ns": empty_ns, "results": results, "program": {"xlated_bytes": 4400}}


def test_the_report_shows_each_kernels_cost_beyond_the_empty_program() -> None:
    results = [
        report.Result("6.1", "6.1.0-57-amd64", 0, 1.0, "", {}, _bench(256, 55)),
        report.Result("6.12", "6.12.117+deb13-amd64", 0, 1.0, "", {}),  # not benchmarked
    ]
    text = report.markdown(results, [])
    rows = [line for line in text.splitlines() if line.startswith("| 6.1.0")]
    assert rows == ["| 6.1.0-57-amd64 | 55 | +201 (4.65x) | +201 (4.65x) | +201 (4.65x) | +201 (4.65x) "
                    "| +201 (4.65x) | +201 (4.65x) | - | 4400 |"]
    assert report.bench_table(results[1:]) == ""
