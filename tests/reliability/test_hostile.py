"""Hostile input: the parsers fuzzed at scale, and garbage at the running daemon.

The parsers may refuse anything, but only with their EventError. At the daemon,
oversized lines and datagrams, invalid UTF-8 and a flood of invalid events are
rejected and counted, and valid events in the middle of the flood are still
applied promptly.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import (
    KernelMap,
    events_by_outcome,
    flow_line,
    loopback_daemon,
    percentiles,
    udp_drops,
)

from flowlabel.events import (
    EventError,
    FlowEvent,
    format_api,
    format_firefly,
    parse_api,
    parse_firefly,
    parse_line,
)
from flowlabel.registry import Registry
from support import STRESS, wait_until

FUZZ_INPUTS = 100_000 if STRESS else 5_000
FUZZ = settings(max_examples=FUZZ_INPUTS, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
REGISTRY = Registry.bundled()

VALID = FlowEvent.of("start", "tcp", "2001:db8::1", "2001:db8::2", 2345, 5777, 2, 15,
                     start_time="2024-03-28T08:58:48Z")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def mutated(document: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A valid document with some members replaced, removed or nested wrongly."""
    def mutate(doc: Any, path: list[str], value: Any, drop: bool) -> Any:
        if not path or not isinstance(doc, dict):
            return value
        head, *rest = path
        copy = dict(doc)
        if drop and not rest:
            copy.pop(head, None)
        else:
            copy[head] = mutate(copy.get(head), rest, value, drop)
        return copy

    paths = []
    for key, value in document.items():
        paths.append([key])
        if isinstance(value, dict):
            paths.extend([key, inner] for inner in value)
    return st.builds(mutate, st.just(document), st.sampled_from(paths), json_values, st.booleans())


def check(parse: Any, data: Any, counter: list[int]) -> None:
    counter[0] += 1
    with contextlib.suppress(EventError):
        parse(data)


def fuzzed(report: dict[str, Any], counter: list[int]) -> None:
    report.update({"inputs fuzzed": counter[0], "crashes (exceptions other than EventError)": 0})
    assert counter[0] >= FUZZ_INPUTS


PIPE_WORDS = ["start", "end", "ongoing", "tcp", "udp", "TCP", "2001:db8::1", "::1", "192.0.2.1",
              "::ffff:1.2.3.4", "fe80::1%eth0", "65535", "65536", "-1", "0x10", "1e3", "atlas",
              "Production-Input", "511", "512", "63", "64", "\x00", "\u00e9", "\ufeff", "\u2028", "٣"]


def test_fuzz_the_pipe_parser(report: dict[str, Any]) -> None:
    counter = [0]
    lines = st.one_of(
        st.lists(st.sampled_from(PIPE_WORDS) | st.text(max_size=12), max_size=10).map(" ".join),
        st.binary(max_size=200),
        st.text(max_size=200),
    )

    @FUZZ
    @given(lines)
    def run(line: Any) -> None:
        check(lambda data: parse_line(data, REGISTRY), line, counter)
        if isinstance(line, str):
            check(lambda data: parse_line(data, REGISTRY), line.encode("utf-8", "surrogatepass"), counter)

    run()
    fuzzed(report, counter)


def test_fuzz_the_firefly_parser(report: dict[str, Any]) -> None:
    counter = [0]
    valid = json.loads(format_firefly(VALID))
    headers = st.sampled_from([b"", b"<134>1 2024-03-28T08:58:48Z host xrootd - firefly-json - ",
                               b"<134>1 - - - - - [a b=\"c\"] ", b"<999>", b"<1>1 "])
    datagrams = st.one_of(
        st.builds(lambda h, doc: h + json.dumps(doc).encode(), headers, mutated(valid)),
        st.builds(lambda h, raw: h + raw, headers, st.binary(max_size=300)),
    )

    @FUZZ
    @given(datagrams)
    def run(datagram: bytes) -> None:
        check(parse_firefly, datagram, counter)

    run()
    fuzzed(report, counter)


def test_fuzz_the_api_body_parser(report: dict[str, Any]) -> None:
    counter = [0]
    valid = format_api(VALID)
    bodies = st.one_of(
        mutated(valid).map(lambda doc: json.dumps(doc).encode()),
        json_values.map(lambda value: json.dumps(value).encode()),
        st.binary(max_size=300),
    )

    @FUZZ
    @given(bodies)
    def run(body: bytes) -> None:
        check(lambda data: parse_api(data, REGISTRY), body, counter)

    run()
    fuzzed(report, counter)


# -- at the running daemon ---------------------------------------------------------------------

FLOOD_SECONDS = 20.0 if STRESS else 4.0
VALID_EVERY = 0.02  # one valid event per source every 20 ms during the flood
# Garbage datagrams per second. Faster than the daemon can read, the socket's buffer overflows and
# the kernel drops valid and invalid datagrams alike (test_load measures that limit); the question
# here is whether garbage the daemon does read delays the valid fireflies among it.
UDP_FLOOD_RATE = 2_000


def garbage_lines() -> bytes:
    junk = [b"start tcp nowhere 1 ::1 2 3 4", b"\xff\xfe not utf-8 \xc3\x28", b"x" * 3000, b"end",
            b"start tcp ::1 1 ::1 2 999 1", b"\x00" * 50]
    return b"\n".join(junk * 60) + b"\n"


def flood_pipe(path: str, stop_at: float) -> None:
    # Whole lines in writes of at most PIPE_BUF bytes, as a well-behaved writer does: a larger write
    # may be split, and another writer's line could land inside one of its lines.
    lines = garbage_lines().splitlines(keepends=True)
    pieces, piece = [], b""
    for line in lines:
        if len(piece) + len(line) > 4096:
            pieces.append(piece)
            piece = b""
        piece += line
    pieces.append(piece)
    fd = os.open(path, os.O_WRONLY)
    try:
        while time.monotonic() < stop_at:
            for piece in pieces:
                os.write(fd, piece)
    finally:
        os.close(fd)


def flood_udp(ns: Any, port: int, stop_at: float) -> None:
    with ns.entered():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    junk = [b"{" * 4000, b"not json", b"\xff" * 100, json.dumps({"version": 1}).encode(), b"x" * 60000]
    period = len(junk) / UDP_FLOOD_RATE
    next_at = time.monotonic()
    with s:
        while next_at < stop_at:
            for datagram in junk:
                s.sendto(datagram, ("127.0.0.1", port))
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))


@pytest.fixture
def daemon(namespace: Any, tmp_path: Path, daemons: list[Any]) -> Any:
    """A daemon on the namespace's loopback with the pipe, the API and the firefly listener, started."""
    started = loopback_daemon(namespace, tmp_path, firefly=True)
    daemons.append(started.start())
    return started


@pytest.mark.netns
def test_a_flood_of_garbage_does_not_starve_valid_events(daemon: Any, report: dict[str, Any]) -> None:
    assert daemon.process is not None
    stop_at = time.monotonic() + FLOOD_SECONDS
    context = multiprocessing.get_context("fork")
    flooders = [context.Process(target=flood_pipe, args=(str(daemon.pipe_path), stop_at)),
                context.Process(target=flood_udp, args=(daemon.ns, 10514, stop_at))]
    for p in flooders:
        p.start()
    with daemon.ns.entered():
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    latencies: dict[str, list[float]] = {"pipe": [], "firefly": []}
    #: Valid events not in the map within 5 s, each looked for again once the flood is over.
    late: dict[str, list[Any]] = {"pipe": [], "firefly": []}
    pipe_fd = os.open(daemon.pipe_path, os.O_WRONLY)
    try:
        with KernelMap(daemon.process.pid) as kmap:
            time.sleep(0.3)  # the flood is under way
            n = 0
            while time.monotonic() < stop_at - 1:
                for source in ("pipe", "firefly"):
                    n += 1
                    sport = 40000 + n
                    key = kmap.key("tcp", "::1", "::1", sport, 443)
                    sent = time.perf_counter()
                    if source == "pipe":
                        # Whole lines of at most PIPE_BUF bytes never mix with the flood's.
                        os.write(pipe_fd, flow_line("start", sport, 443, 3, 4))
                    else:
                        event = FlowEvent.of("start", "tcp", "::1", "::1", sport, 443, 3, 4)
                        udp.sendto(format_firefly(event), ("127.0.0.1", 10514))
                    deadline = sent + 5.0
                    while kmap.get(key) is None and time.perf_counter() < deadline:
                        time.sleep(0.0005)
                    if kmap.get(key) is None:
                        late[source].append(key)  # looked for again after the flood
                    else:
                        latencies[source].append((time.perf_counter() - sent) * 1000)
                time.sleep(VALID_EVERY)
    finally:
        os.close(pipe_fd)
        udp.close()
        for p in flooders:
            p.join(FLOOD_SECONDS + 30)
    with KernelMap(daemon.process.pid) as kmap:
        wait_until(lambda: all(kmap.get(k) is not None for keys in late.values() for k in keys), timeout=10)
        lost = {source: sum(kmap.get(key) is None for key in keys) for source, keys in late.items()}
    outcomes = {s: events_by_outcome(daemon.metrics(), s) for s in ("pipe", "firefly")}
    dropped = udp_drops(daemon.process.pid, 10514)
    for source in ("pipe", "firefly"):
        p50, p99, worst = percentiles(latencies[source]) if latencies[source] else (0.0, 0.0, 0.0)
        report.update({
            f"{source}: invalid inputs rejected": outcomes[source].get("rejected", 0),
            f"{source}: valid events sent": len(latencies[source]) + len(late[source]),
            f"{source}: valid events applied": len(latencies[source]) + len(late[source]) - lost[source],
            f"{source}: applied later than 5 s": len(late[source]) - lost[source],
            f"{source}: latency p50 ms": p50,
            f"{source}: latency p99 ms": p99,
            f"{source}: latency max ms": worst,
        })
    report["firefly socket drops during the flood"] = dropped
    assert daemon.alive()
    assert outcomes["pipe"].get("rejected", 0) > 1000
    # Valid pipe lines queue behind the garbage but are never lost. A firefly can be dropped by the
    # kernel when the flood fills the socket's buffer (counted above); every one that arrived is applied.
    assert lost["pipe"] == 0 and latencies["pipe"]
    assert lost["firefly"] <= dropped and latencies["firefly"]
    assert outcomes["pipe"].get("started", 0) == len(latencies["pipe"]) + len(late["pipe"])
    applied_fireflies = len(latencies["firefly"]) + len(late["firefly"]) - lost["firefly"]
    assert outcomes["firefly"].get("started", 0) == applied_fireflies
    assert daemon.stop() == 0


@pytest.mark.netns
def test_oversized_and_undecodable_input_is_rejected_and_counted(daemon: Any, report: dict[str, Any]) -> None:
    # A line of a megabyte without a newline, then one with; invalid UTF-8; a line at the limit.
    daemon.write_pipe(b"y" * (1 << 20))
    daemon.write_pipe(b"z" * 5000 + b"\n" + b"start tcp ::1 \xff\xfe ::1 2 3 4\n")
    daemon.write_pipe(flow_line("start", 41000, 443, 1, 1).rstrip(b"\n").ljust(1000) + b"\n")
    daemon.write_pipe(flow_line("start", 41001, 443, 1, 1).rstrip(b"\n").ljust(1001) + b"\n")
    with daemon.ns.entered():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.sendto(b"{" + b" " * 65000 + b"}", ("127.0.0.1", 10514))
        s.sendto(format_firefly(FlowEvent.of("start", "tcp", "::1", "::1", 41002, 443, 1, 1)) + b" " * 5000,
                 ("127.0.0.1", 10514))
        s.sendto(b"\xc3\x28" * 10, ("127.0.0.1", 10514))
        s.sendto(format_firefly(FlowEvent.of("start", "tcp", "::1", "::1", 41003, 443, 1, 1)),
                 ("127.0.0.1", 10514))
    assert wait_until(lambda: len(daemon.flows()) == 2, timeout=5)
    assert {f["src_port"] for f in daemon.flows()} == {41000, 41003}
    # The unterminated megabyte is taken as soon as it is over the limit, then skipped to its newline.
    assert wait_until(lambda: events_by_outcome(daemon.metrics(), "pipe").get("rejected") == 3, timeout=5)
    assert events_by_outcome(daemon.metrics(), "firefly").get("rejected") == 3
    metrics = daemon.metrics()
    rejected = sum(events_by_outcome(metrics, source).get("rejected", 0) for source in ("pipe", "firefly"))
    report.update({"oversized or undecodable inputs": 6, "rejected and counted": rejected,
                   "daemon alive after them": daemon.alive()})
    assert daemon.alive() and daemon.stop() == 0


