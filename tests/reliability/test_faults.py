"""Faults: the daemon killed mid-burst, its interface deleted and re-created, its pipe removed."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Daemon, attachments, decoded
from reliability_support import KernelMap, flow_line, write_lines

from support import STRESS, wait_until
from support.kernel import attach_modes
from support.netns import A, B, Pair

pytestmark = pytest.mark.netns

BURST = 100_000 if STRESS else 20_000


def burst(path: str) -> None:
    data = b"".join(flow_line("start", 1024 + i % 60000, 5000 + i // 60000, 1 + i % 500, i % 64,
                              src=A, dst=B, protocol="udp") for i in range(BURST))
    with contextlib.suppress(BrokenPipeError):  # the reader is killed half-way
        write_lines(path, data)


@attach_modes
def test_sigkill_mid_burst_then_restart_restores_every_applied_flow(
    mode: str, pair: Pair, tmp_path: Path, daemons: list[Daemon], report: dict[str, Any]
) -> None:
    before_daemon = attachments(pair.a, pair.if_a)
    daemon = Daemon.standard(pair, tmp_path)
    daemon.document["backends"]["ebpf"].update(attachMode=mode, maxFlows=2 * BURST)
    daemon.config_path.write_text(json.dumps(daemon.document))
    daemons.append(daemon.start())
    attached = attachments(pair.a, pair.if_a)
    assert daemon.process is not None
    with KernelMap(daemon.process.pid) as kmap:
        writer = multiprocessing.get_context("fork").Process(target=burst, args=(str(daemon.pipe_path),))
        writer.start()
        # Somewhere in the middle of the burst.
        taken = lambda: daemon.api("GET", "/health")["events"]  # noqa: E731
        assert wait_until(lambda: taken() >= BURST // 3, timeout=60, interval=0.01)
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(10)
        writer.join(30)
        # Our descriptor keeps the map alive: exactly what the daemon had applied when it died.
        applied = kmap.entries()
    assert 0 < len(applied) < BURST

    restarted = Daemon(pair.a, tmp_path, daemon.document)
    daemons.append(restarted.start())
    assert restarted.process is not None
    with KernelMap(restarted.process.pid) as kmap:
        restored = kmap.entries()
        sent = {kmap.key("udp", A, B, 1024 + i % 60000, 5000 + i // 60000) for i in range(BURST)}
        sample = {(1024 + i, 5000): kmap.key("udp", A, B, 1024 + i, 5000) for i in range(3)}
    lost = {key for key in applied if restored.get(key) != applied[key]}
    extra = restored.keys() - applied.keys()
    after_restart = attachments(pair.a, pair.if_a)
    seen = pair.labels(list(sample))
    report.update({
        "attach mode": mode,
        "events in the burst": BURST,
        "applied before SIGKILL (kernel map)": len(applied),
        "restored after restart": len(restored),
        "lost": len(lost),
        "restored beyond the map (journaled, not yet in map)": len(extra),
        "faults injected / survived": "1 / 1",
    })
    assert not lost
    assert extra <= sent
    # One of each at most, as after the first start: no second filter, qdisc or link.
    assert after_restart == attached, (before_daemon, attached, after_restart)
    assert attached["clsact"] <= 1 and attached["bpf filters"] <= 1 and len(attached["tcx"]) <= 1
    # Marking resumed: the first flows of the burst leave with their restored labels.
    for flow, key in sample.items():
        assert seen[flow] == {restored[key]} != {0}, flow
    assert restarted.stop() == 0
    # The classifier is gone, and so is a clsact qdisc the killed daemon created: it noted that
    # in its lock directory, and the next daemon removes it at exit as if it had made it.
    left = attachments(pair.a, pair.if_a)
    assert left["bpf filters"] == 0 and left["tcx"] == []
    assert left["clsact"] == before_daemon["clsact"]


def test_the_interface_deleted_and_recreated_is_marked_again(
    pair: Pair, tmp_path: Path, daemons: list[Daemon], report: dict[str, Any]
) -> None:
    daemon = Daemon.standard(pair, tmp_path)
    daemons.append(daemon.start())
    before, during = (27400, 9740), (27401, 9741)
    daemon.write_pipe(flow_line("start", *before, 70, 7, src=A, dst=B, protocol="udp"))
    daemon.wait_for_flows(1)
    first = pair.labels([before])[before]
    assert first != {0}

    pair.delete_link()
    assert wait_until(lambda: f"interface {pair.if_a} is gone" in daemon.log(), timeout=10)
    # Events keep coming while the interface is away, and are kept.
    daemon.write_pipe(flow_line("start", *during, 71, 8, src=A, dst=B, protocol="udp"))
    assert len(daemon.wait_for_flows(2)) == 2
    pair.add_link()
    assert wait_until(lambda: f"interface {pair.if_a} is back" in daemon.log(), timeout=10)
    seen = pair.labels([before, during])
    report.update({"faults injected / survived": "1 / 1", "flows marked again": 2})
    assert daemon.alive()
    assert seen[before] == first
    assert {(x.experiment, x.activity) for x in decoded(seen[during])} == {(71, 8)}
    assert daemon.stop() == 0


def test_a_removed_pipe_is_created_again(
    pair: Pair, tmp_path: Path, daemons: list[Daemon], report: dict[str, Any]
) -> None:
    daemon = Daemon.standard(pair, tmp_path)
    daemons.append(daemon.start())
    pipe = daemon.pipe_path
    first = os.stat(pipe)

    def line(sport: int) -> bytes:
        return flow_line("start", sport, 443, 1, 2, src=A, dst=B)

    daemon.write_pipe(line(30001))
    daemon.wait_for_flows(1)
    faults = 0

    os.unlink(pipe)
    faults += 1
    assert wait_until(lambda: pipe.exists(), timeout=5)
    again = os.stat(pipe)
    assert stat.S_ISFIFO(again.st_mode) and again.st_ino != first.st_ino
    assert (stat.S_IMODE(again.st_mode), again.st_gid) == (stat.S_IMODE(first.st_mode), first.st_gid) == (
        0o660, first.st_gid)
    assert "the pipe " + str(pipe) + " was removed; created it again" in daemon.log()
    daemon.write_pipe(line(30002))
    assert len(daemon.wait_for_flows(2)) == 2

    # Something else in its place is left alone, and logged once, until it goes.
    os.unlink(pipe)
    pipe.write_text("not a pipe\n")
    faults += 1
    assert wait_until(lambda: "is no longer a named pipe" in daemon.log(), timeout=5)
    time.sleep(2.5)
    assert pipe.read_text() == "not a pipe\n" and daemon.log().count("is no longer a named pipe") == 1
    pipe.unlink()
    assert wait_until(lambda: pipe.exists() and stat.S_ISFIFO(os.stat(pipe).st_mode), timeout=5)
    daemon.write_pipe(line(30003))
    assert len(daemon.wait_for_flows(3)) == 3

    report.update({"faults injected / survived": f"{faults} / {faults}"})
    assert daemon.alive() and daemon.stop() == 0
    assert not pipe.exists()
