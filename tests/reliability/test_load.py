"""Load: bursts of flow events through the pipe and as fireflies; the kernel map must end up exact.

Flow ``i`` is ``tcp ::1 1024+i%60000 -> ::1 10000+i//60000``, experiment ``1+i%500``,
activity ``i%64``: its map key and label are known, so the map itself is compared
with what the events asked for.
"""

from __future__ import annotations

import multiprocessing
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from reliability_support import (
    KernelMap,
    events_by_outcome,
    flow_line,
    loopback_daemon,
    udp_drops,
    write_lines,
)

from flowlabel.events import FlowEvent, format_firefly
from flowlabel.label import decode
from support import STRESS, wait_until

pytestmark = pytest.mark.netns

PIPE_FLOWS = 100_000 if STRESS else 10_000
ROUNDS = 10  # start, end, start, ... per flow; then the even flows start once more
WRITERS = 4
FIREFLY_SENDERS = 4
FIREFLY_RUNS = {
    # A burst of 100,000 at full speed from 4 senders must fit the listener's receive buffer.
    "burst": (100_000, None),
    "paced": (100_000 if STRESS else 6_000, 3_000),
}
FIREFLY_PORT = 10514


def ports(i: int, base: int = 10000) -> tuple[int, int]:
    return 1024 + i % 60000, base + i // 60000


def ids(i: int) -> tuple[int, int]:
    return 1 + i % 500, i % 64


def writer_stream(writer: int, flows: int) -> bytes:
    """The lines of one writer: its flows in rounds, so that every flow is active at once in between."""
    mine = range(writer, flows, WRITERS)
    parts = []
    for r in range(ROUNDS):
        state = "start" if r % 2 == 0 else "end"
        parts.extend(flow_line(state, *ports(i), *ids(i)) for i in mine)
    parts.extend(flow_line("start", *ports(i), *ids(i)) for i in mine if i % 2 == 0)
    return b"".join(parts)


def write_as(writer: int, flows: int, pipe: str) -> None:
    write_lines(pipe, writer_stream(writer, flows))


def test_pipe_burst_from_concurrent_writers_leaves_the_map_exact(
    namespace: Any, tmp_path: Path, daemons: list[Any], report: dict[str, Any]
) -> None:
    daemon = loopback_daemon(namespace, tmp_path, max_flows=2 * PIPE_FLOWS)
    daemons.append(daemon.start())
    sent = sum(len(writer_stream(w, PIPE_FLOWS).splitlines()) for w in range(WRITERS))
    assert sent == PIPE_FLOWS * ROUNDS + PIPE_FLOWS // 2

    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=write_as, args=(w, PIPE_FLOWS, str(daemon.pipe_path)))
               for w in range(WRITERS)]
    began = time.perf_counter()
    for w in writers:
        w.start()
    taken = wait_until(lambda: daemon.api("GET", "/health")["events"] >= sent, timeout=600, interval=0.1)
    elapsed = time.perf_counter() - began
    for w in writers:
        w.join(30)
        assert w.exitcode == 0
    assert taken, daemon.api("GET", "/health")

    outcomes = events_by_outcome(daemon.metrics(), "pipe")
    with KernelMap(daemon.process.pid) as kmap:
        entries = kmap.entries()
        wanted = {kmap.key("tcp", "::1", "::1", *ports(i)): ids(i) for i in range(0, PIPE_FLOWS, 2)}
    missing = wanted.keys() - entries.keys()
    extra = entries.keys() - wanted.keys()
    wrong = [k for k in wanted.keys() & entries.keys() if tuple(decode(entries[k]))[:2] != wanted[k]]
    applied = sum(n for outcome, n in outcomes.items() if outcome not in ("rejected", "failed"))
    report.update({
        "writers": WRITERS,
        "distinct flows": PIPE_FLOWS,
        "events sent": sent,
        "events applied": applied,
        "events lost": sent - applied,
        "flows expected in map": len(wanted),
        "flows missing from map": len(missing),
        "extra flows in map": len(extra),
        "wrong labels": len(wrong),
        "seconds": elapsed,
        "events per second": sent / elapsed,
    })
    assert outcomes.get("rejected", 0) == 0 and outcomes.get("failed", 0) == 0, outcomes
    assert applied == sent
    assert not missing and not extra and not wrong
    assert daemon.api("GET", "/health")["active_flows"] == len(wanted)
    assert daemon.stop() == 0


def firefly_datagram(i: int) -> bytes:
    experiment, activity = ids(i)
    event = FlowEvent.of("start", "tcp", "::1", "::1", *ports(i, base=30000), experiment, activity,
                         start_time="2024-03-28T08:58:48Z")
    return format_firefly(event, syslog=i % 2 == 0)


def send_fireflies(sender: int, ns: Any, count: int, rate: float | None) -> None:
    """Every FIREFLY_SENDERS-th of ``count`` fireflies; ``rate`` is the senders' rate together."""
    datagrams = [firefly_datagram(i) for i in range(sender, count, FIREFLY_SENDERS)]
    with ns.entered():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    period = FIREFLY_SENDERS / rate if rate else 0.0
    began = time.perf_counter()
    with s:
        for n, datagram in enumerate(datagrams):
            if period:
                while time.perf_counter() < began + n * period:
                    time.sleep(period / 4)
            s.sendto(datagram, ("127.0.0.1", FIREFLY_PORT))


@pytest.mark.parametrize("run", list(FIREFLY_RUNS))
def test_fireflies_apply_every_datagram_the_kernel_delivered(
    run: str, namespace: Any, tmp_path: Path, daemons: list[Any], report: dict[str, Any]
) -> None:
    count, rate = FIREFLY_RUNS[run]
    daemon = loopback_daemon(namespace, tmp_path, max_flows=2 * count, firefly=True)
    daemons.append(daemon.start())
    pid = daemon.process.pid
    context = multiprocessing.get_context("fork")
    senders = [context.Process(target=send_fireflies, args=(s, namespace, count, rate))
               for s in range(FIREFLY_SENDERS)]
    began = time.perf_counter()
    for s in senders:
        s.start()
    for s in senders:
        s.join(300)
        assert s.exitcode == 0
    sending = time.perf_counter() - began

    def settled() -> bool:
        # Every datagram is either counted by the daemon or by the kernel as dropped.
        done = events_by_outcome(daemon.metrics(), "firefly")
        return sum(done.values()) + udp_drops(pid, FIREFLY_PORT) >= count

    assert wait_until(settled, timeout=300, interval=0.2), (events_by_outcome(daemon.metrics(), "firefly"),
                                                            udp_drops(pid, FIREFLY_PORT))
    elapsed = time.perf_counter() - began
    dropped = udp_drops(pid, FIREFLY_PORT)
    outcomes = events_by_outcome(daemon.metrics(), "firefly")
    applied = outcomes.get("started", 0)
    with KernelMap(pid) as kmap:
        entries = kmap.entries()
        sent_keys = {kmap.key("tcp", "::1", "::1", *ports(i, base=30000)): ids(i) for i in range(count)}
    report.update({
        "senders": FIREFLY_SENDERS,
        "paced at per second": rate or "no",
        "fireflies sent": count,
        "dropped by the kernel (socket drops)": dropped,
        "fireflies applied": applied,
        "lost beyond the kernel's drops": count - dropped - applied,
        "flows in map": len(entries),
        "send rate per second": count / sending,
        "applied per second": applied / elapsed,
    })
    assert outcomes.keys() <= {"started"}, outcomes
    assert dropped == 0  # the receive buffer holds the burst
    assert applied == count
    assert len(entries) == applied and entries.keys() <= sent_keys.keys()
    assert all(tuple(decode(label))[:2] == sent_keys[key] for key, label in entries.items())
    assert daemon.stop() == 0
