"""TCP throughput over a veth pair with and without the classifier on the sender's egress.

One long-lived connection sends as fast as it can while the classifier is
attached and detached in turn (off, on, on, off, ...), so that connection
start-up and slow drifts weigh on both sides alike. 10,000 flows are in the
map, the connection's own among them, so every packet is looked up and
rewritten. The process is pinned to one CPU while it measures: sender,
receiver and the veth's softirq work then share that CPU.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import socket
import statistics
import threading
import time
from typing import Any

from flowlabel.flow import Flow
from flowlabel.marker import Marker
from support.netns import A, B, Namespace, veth_pair

FLOWS_IN_MAP = 10_000
LABEL = 0x5C175
SETTLE = 0.02


def link_stats(ns: Namespace, ifname: str) -> dict[str, Any]:
    return json.loads(ns.ip("-j", "-s", "link", "show", "dev", ifname).stdout)[0]["stats64"]


def wait_quiet(ns: Namespace, ifname: str, quiet: float = 1.5, limit: float = 15.0) -> None:
    """Wait until the link has sent nothing for ``quiet`` seconds (its start-up MLD reports are over).

    A packet of its own that the link sends while the counts are read would be
    counted by one side and not the other.
    """
    deadline = time.monotonic() + limit
    last = link_stats(ns, ifname)["tx"]["packets"]
    since = time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{ifname} kept sending packets of its own for {limit} s")
        time.sleep(0.1)
        now = link_stats(ns, ifname)["tx"]["packets"]
        if now != last:
            last, since = now, time.monotonic()


def measure(windows: int, window_seconds: float) -> dict[str, Any]:
    """Throughput with and without the marker over ``windows`` windows of each; packet counts."""
    home = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(home)})
    try:
        with Namespace() as a, Namespace() as b:
            if_a, _ = veth_pair(a, b, A, B)
            wait_quiet(a, if_a)
            with a.entered():
                marker = Marker([if_a])
            try:
                return _measure(a, b, if_a, marker, windows, window_seconds)
            finally:
                with a.entered():
                    marker.close()
    finally:
        os.sched_setaffinity(0, home)


def _measure(a: Namespace, b: Namespace, if_a: str, marker: Marker, windows: int,
             window_seconds: float) -> dict[str, Any]:
    rnd = random.Random(7)
    marker.add_many(
        (Flow.of("tcp", A, ipaddress.IPv6Address(rnd.getrandbits(128)), rnd.randrange(1, 65536), 443),
         rnd.getrandbits(20))
        for _ in range(FLOWS_IN_MAP - 1)
    )
    with b.entered():
        server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        server.bind((B, 0))
        server.listen(1)
    with a.entered():
        client = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        client.bind((A, 0))
    marker.add(Flow.of("tcp", A, B, client.getsockname()[1], server.getsockname()[1]), LABEL)
    received = [0]
    written = [0]
    stop = threading.Event()
    go = threading.Event()  # cleared: the sender pauses between writes
    idle = threading.Event()  # set while the sender is paused

    def quiesce() -> None:
        """Pause the sender and wait until everything it wrote has arrived."""
        go.clear()
        if not idle.wait(30):
            raise RuntimeError("the sender did not pause")
        idle.clear()  # set again by the sender at its next pause
        deadline = time.monotonic() + 30
        while received[0] != written[0]:
            if time.monotonic() > deadline:
                raise RuntimeError("data written did not arrive")
            time.sleep(0.002)

    def serve() -> None:
        conn, _ = server.accept()
        buf = bytearray(1 << 20)
        with conn:
            while n := conn.recv_into(buf):
                received[0] += n

    def send() -> None:
        data = b"x" * (1 << 20)
        with client:
            while not stop.is_set():
                if not go.is_set():
                    idle.set()
                    go.wait()
                client.sendall(data)
                written[0] += len(data)

    receiver = threading.Thread(target=serve)
    receiver.start()
    client.connect((B, server.getsockname()[1]))
    sender = threading.Thread(target=send)
    go.set()
    sender.start()
    rates: dict[bool, list[float]] = {False: [], True: []}
    sent = seen = marked = drops = 0
    try:
        time.sleep(0.3)  # past slow start
        quiesce()
        for i in range(2 * windows):
            on = i % 4 in (1, 2)
            if on and if_a not in marker.interfaces:
                with a.entered():
                    marker.attach(if_a)
            elif not on and if_a in marker.interfaces:
                marker.detach(if_a)
            # The sender is paused around every count (and while the classifier
            # comes and goes), so the interface's and the classifier's counts
            # cover exactly the same packets.
            stats0, counters0 = link_stats(a, if_a), marker.counters()
            go.set()
            time.sleep(SETTLE)
            bytes0, t0 = received[0], time.perf_counter()
            time.sleep(window_seconds)
            bytes1, t1 = received[0], time.perf_counter()
            quiesce()
            stats1, counters1 = link_stats(a, if_a), marker.counters()
            rates[on].append((bytes1 - bytes0) / (t1 - t0))
            drops += stats1["tx"]["dropped"] - stats0["tx"]["dropped"]
            if on:
                sent += stats1["tx"]["packets"] - stats0["tx"]["packets"]
                seen += counters1["seen"] - counters0["seen"]
                marked += counters1["marked"] - counters0["marked"]
    finally:
        stop.set()
        go.set()
        sender.join(30)
        receiver.join(30)
        server.close()
    off, on_ = statistics.median(rates[False]), statistics.median(rates[True])
    return {
        "flows in map": FLOWS_IN_MAP,
        "windows each way": windows,
        "window seconds": window_seconds,
        "without marker, median GB/s": off / 1e9,
        "with marker, median GB/s": on_ / 1e9,
        "ratio of medians with/without": on_ / off,
        "packets sent while attached (interface)": sent,
        "packets seen (classifier)": seen,
        "packets marked": marked,
        "interface tx drops": drops,
    }
