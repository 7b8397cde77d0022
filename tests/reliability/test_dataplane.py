"""The data plane never harms traffic: throughput and drops with the marker attached.

A TCP transfer over a veth pair, alternately without and with the classifier on
the sender's egress (10,000 flows in the map, the transfer's own flow among
them, so every packet is looked up and rewritten).
"""

from __future__ import annotations

import ipaddress
import json
import random
import socket
import statistics
import threading
import time
from typing import Any

import pytest

from flowlabel.flow import Flow
from flowlabel.marker import Marker
from support import STRESS
from support.netns import Namespace, veth_pair

pytestmark = pytest.mark.netns

A, B = "fd00::1", "fd00::2"
FLOWS_IN_MAP = 10_000
RUN_SECONDS = 2.0 if STRESS else 0.5
# Noise on a shared machine is larger than the classifier's cost; more pairs
# are run only while the median says otherwise.
PAIRS_PER_ROUND = 7
MAX_ROUNDS = 5
MIN_RATIO = 0.99


def link_stats(ns: Namespace, ifname: str) -> dict[str, Any]:
    return json.loads(ns.ip("-j", "-s", "link", "show", "dev", ifname).stdout)[0]["stats64"]


def transfer(a: Namespace, b: Namespace, sport: int, dport: int, seconds: float) -> float:
    """Bytes per second of one TCP connection a -> b sending as fast as it can."""
    with b.entered():
        server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((B, dport))
        server.listen(1)
    with a.entered():
        client = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        client.bind((A, sport))
    received = [0]

    def serve() -> None:
        conn, _ = server.accept()
        buf = bytearray(1 << 20)
        with conn:
            while n := conn.recv_into(buf):
                received[0] += n

    thread = threading.Thread(target=serve)
    thread.start()
    client.connect((B, dport))
    data = b"x" * (1 << 20)
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        client.sendall(data)
    client.close()
    thread.join(30)
    server.close()
    return received[0] / (time.perf_counter() - started)


def test_marker_keeps_throughput_and_drops_nothing(report: dict[str, Any]) -> None:
    with Namespace() as a, Namespace() as b:
        if_a, _ = veth_pair(a, b, A, B)
        with a.entered():
            marker = Marker([if_a])
        try:
            rnd = random.Random(7)
            marker.add_many(
                (Flow.of("tcp", A, ipaddress.IPv6Address(rnd.getrandbits(128)), rnd.randrange(1, 65536), 443),
                 rnd.getrandbits(20))
                for _ in range(FLOWS_IN_MAP - 1)
            )
            off_rates: list[float] = []
            on_rates: list[float] = []
            tx_packets = seen = marked = 0
            port = 30000
            for _ in range(MAX_ROUNDS):
                for _ in range(PAIRS_PER_ROUND):
                    port += 2
                    flow = Flow.of("tcp", A, B, port + 1, port)
                    marker.add(flow, 0x5C175)
                    marker.detach(if_a)
                    off = transfer(a, b, port + 1, port, RUN_SECONDS)
                    port += 2
                    marker.remove(flow)
                    flow = Flow.of("tcp", A, B, port + 1, port)
                    marker.add(flow, 0x5C175)
                    with a.entered():
                        marker.attach(if_a)
                    before, counters_before = link_stats(a, if_a), marker.counters()
                    on = transfer(a, b, port + 1, port, RUN_SECONDS)
                    after, counters_after = link_stats(a, if_a), marker.counters()
                    marker.remove(flow)
                    tx_packets += after["tx"]["packets"] - before["tx"]["packets"]
                    seen += counters_after["seen"] - counters_before["seen"]
                    marked += counters_after["marked"] - counters_before["marked"]
                    assert after["tx"]["dropped"] == before["tx"]["dropped"]
                    off_rates.append(off)
                    on_rates.append(on)
                if statistics.median(on_rates) / statistics.median(off_rates) >= MIN_RATIO:
                    break
        finally:
            with a.entered():
                marker.close()

    ratio = statistics.median(on_rates) / statistics.median(off_rates)
    report.update({
        "flows in map": FLOWS_IN_MAP,
        "interleaved pairs": len(on_rates),
        "without marker, median GB/s": statistics.median(off_rates) / 1e9,
        "with marker, median GB/s": statistics.median(on_rates) / 1e9,
        "ratio of medians with/without": ratio,
        "packets sent (interface)": tx_packets,
        "packets seen (classifier)": seen,
        "packets marked": marked,
    })
    # Every packet the interface sent passed the classifier, and it let each one through.
    assert seen == tx_packets
    assert marked >= 0.99 * seen  # all but the occasional neighbour-discovery packet
    assert ratio >= MIN_RATIO, (off_rates, on_rates)
