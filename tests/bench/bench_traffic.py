"""The classifier's cost per packet on real traffic, from the kernel's BPF statistics.

Usage::

    python tests/bench/bench_traffic.py [--json OUT] [--rounds N] [--seconds S] [--flows N] [--strict]

Streams run over a veth pair between two network namespaces, the whole process
pinned to one CPU (sender, receiver and the veth's softirq work share it, so
the per-CPU cache sees the packets in the order the CPU sends them):

- tcp_1_marked: one IPv6 TCP connection whose flow is in the map;
- tcp_4_marked: four IPv6 TCP connections in the map, written to in turn in
  64 KiB pieces, so their packets interleave on the CPU;
- tcp_unmarked: one IPv6 TCP connection that is not in the map;
- udp_marked: IPv6 UDP datagrams of 1,200 bytes, in the map;
- ipv4: one IPv4 TCP connection;
- tcp_1_labelled: one IPv6 TCP connection in the map whose sender sets the
  same label itself (the flow label manager, as XRootD's packet marking does):
  the classifier finds the label right and leaves the packet alone.

``--flows`` other flows are in the map too. For every row and round, the
empty classifier (bpf/baseline.bpf.c) and the marker are attached in turn to
the sender's egress for ``--seconds`` each while the traffic keeps flowing;
the kernel's ``run_time_ns`` / ``run_cnt`` (kernel.bpf_stats_enabled) give the
time per packet (per skb: TCP hands the device ~64 KB GSO packets). The ratio
marker / empty of each round is what the targets bound; the table shows the
median over the rounds and its range. A second figure is the CPU time of the
whole process per GB moved, marker / empty: what the classifier adds to the
path as a whole.

The marker runs with its direct writer (bpf/writer.bpf.c) where the kernel
can run it, as the daemon does; the first line says whether it did. A second
table takes a marked packet's cost apart: the marker without its direct
writer (every label written with bpf_skb_store_bytes), and the marker
compiled from the checkout with -DFLOWLABEL_BENCH_WRITE=1 (no write), 2 (a
direct store in the classifier, which makes the verifier unclone every packet
first) and 3 (a load through a helper in place of the write), on the one-flow
TCP, the UDP and the unmarked TCP rows (``--no-variants`` skips it; it needs
clang). Needs root.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import random
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "bench"))

from bench_classifier import baseline_object, compile_bpf  # noqa: E402

from flowlabel.bpf.attach import Attachment  # noqa: E402
from flowlabel.bpf.program import Program  # noqa: E402
from flowlabel.marker import bundled_object  # noqa: E402
from flowlabel.netif import link  # noqa: E402
from support.netns import A, B, Namespace, veth_pair  # noqa: E402

#: Marker time per packet as a multiple of the empty classifier's on the same traffic.
TARGETS = {"tcp_1_marked": 1.6, "tcp_4_marked": 2.0, "udp_marked": 1.6, "tcp_unmarked": 1.2, "ipv4": 1.1,
           "tcp_1_labelled": 1.6}
ROWS = tuple(TARGETS)
#: -DFLOWLABEL_BENCH_WRITE values (bpf/marker.bpf.c) and the rows they run on.
VARIANTS = {1: "no write", 2: "direct store", 3: "a helper load instead"}
#: The marker with its direct writer left out: every label written with bpf_skb_store_bytes.
NO_WRITER = "helper only, no writer"
VARIANT_ROWS = ("tcp_1_marked", "udp_marked", "tcp_unmarked")
A4, B4 = "10.99.0.1", "10.99.0.2"
LABEL = 0x5C175
CHUNK = 1 << 16
DATAGRAM = 1200
STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


class Window(NamedTuple):
    run_ns: int
    runs: int
    cpu_s: float
    bytes: int


def run_stats(fd: int) -> tuple[int, int]:
    """The kernel's run_time_ns and run_cnt of the program behind ``fd``."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
                  if ":" in line)
    return int(fields["run_time_ns"]), int(fields["run_cnt"])


@contextmanager
def bpf_stats() -> Iterator[None]:
    before = STATS_SYSCTL.read_text()
    STATS_SYSCTL.write_text("1\n")
    try:
        yield
    finally:
        STATS_SYSCTL.write_text(before)


def sender_sets_label(sock: socket.socket, dst: str, label: int) -> None:
    """Have the kernel write ``label`` into every packet ``sock`` sends to ``dst`` (flow label manager,
    IPV6_FLOWINFO_SEND; the address's flowinfo at connect names it), as XRootD's packet marking does."""
    ipv6_flowlabel_mgr, ipv6_flowinfo_send = 32, 33
    get, exclusive, create = 0, 1, 1
    # struct in6_flowlabel_req: destination, label (network order), action, share, flags, expires, linger
    request = struct.pack("=16s4sBBHHH4x", ipaddress.ip_address(dst).packed, label.to_bytes(4, "big"), get,
                          exclusive, create, 0, 0)
    sock.setsockopt(socket.IPPROTO_IPV6, ipv6_flowlabel_mgr, request)
    sock.setsockopt(socket.IPPROTO_IPV6, ipv6_flowinfo_send, 1)


class Traffic:
    """Streams from namespace a to b that run until closed; ``moved`` counts bytes received."""

    def __init__(self, a: Namespace, b: Namespace, kind: str, streams: int) -> None:
        self.moved = 0
        self.flows: list[tuple[int, bytes, bytes, int, int]] = []  # protocol, src, dst, sport, dport
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        family = socket.AF_INET if kind == "ipv4" else socket.AF_INET6
        src, dst = (A4, B4) if kind == "ipv4" else (A, B)
        proto = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
        with b.entered():
            server = socket.socket(family, proto)
            server.bind((dst, 0))
        port = server.getsockname()[1]
        with a.entered():
            clients = [socket.socket(family, proto) for _ in range(streams)]
            for c in clients:
                c.bind((src, 0))
                if kind == "tcp_labelled":
                    sender_sets_label(c, dst, LABEL)
        if kind == "udp":
            server.settimeout(0.2)
            self._spawn(self._drain_udp, server)
            for c in clients:
                c.connect((dst, port))
        else:
            server.listen(streams)
            for c in clients:
                c.connect((dst, port, LABEL, 0) if kind == "tcp_labelled" else (dst, port))
                conn, _ = server.accept()
                conn.settimeout(0.2)
                self._spawn(self._drain_tcp, conn)
            server.close()
        number = socket.IPPROTO_UDP if kind == "udp" else socket.IPPROTO_TCP
        for c in clients:
            sport = c.getsockname()[1]
            self.flows.append((number, ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed,
                               sport, port))
        self._spawn(self._send, clients, DATAGRAM if kind == "udp" else CHUNK)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _drain_tcp(self, conn: socket.socket) -> None:
        buf = bytearray(1 << 20)
        with conn:
            while not self._stop.is_set():
                try:
                    n = conn.recv_into(buf)
                except TimeoutError:
                    continue
                if not n:
                    return
                self.moved += n

    def _drain_udp(self, sock: socket.socket) -> None:
        buf = bytearray(1 << 16)
        with sock:
            while not self._stop.is_set():
                try:
                    self.moved += sock.recv_into(buf)
                except TimeoutError:
                    continue

    def _send(self, clients: list[socket.socket], size: int) -> None:
        data = b"x" * size
        while not self._stop.is_set():
            for c in clients:  # in turn: the streams' packets interleave
                with suppress(OSError):  # a full UDP buffer on the veth: go on with the next
                    c.send(data)
        for c in clients:
            c.close()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)


def window(program: Program, ifname: str, traffic: Traffic, seconds: float) -> Window:
    attachment = Attachment(link(ifname), program, "tc", remove_qdisc=True)
    try:
        time.sleep(0.05)  # the first packets warm the caches
        ns0, runs0 = run_stats(program.prog_fd)
        cpu0, moved0 = time.process_time(), traffic.moved
        time.sleep(seconds)
        ns1, runs1 = run_stats(program.prog_fd)
        cpu1, moved1 = time.process_time(), traffic.moved
    finally:
        attachment.detach()
    return Window(ns1 - ns0, runs1 - runs0, cpu1 - cpu0, moved1 - moved0)


def fill(program: Program, count: int, rng: random.Random) -> None:
    flows = program.flows
    assert flows is not None
    for i in range(count):
        flows.put(flows.key(rng.choice((6, 17)), rng.randbytes(16), rng.randbytes(16), rng.randrange(1 << 16),
                            rng.randrange(1 << 16)), i & 0xFFFFF)


def measure_row(row: str, a: Namespace, b: Namespace, ifname: str, marker: Program, empty: Program,
                rounds: int, seconds: float) -> dict[str, Any]:
    kind = {"udp_marked": "udp", "ipv4": "ipv4", "tcp_1_labelled": "tcp_labelled"}.get(row, "tcp")
    traffic = Traffic(a, b, kind, 4 if row == "tcp_4_marked" else 1)
    flows = marker.flows
    assert flows is not None
    keys = [flows.key(*flow) for flow in traffic.flows if len(flow[1]) == 16]
    try:
        if row != "tcp_unmarked":
            for key in keys:
                flows.put(key, LABEL)
        with a.entered():
            time.sleep(0.3)  # past slow start
            samples = []
            for _ in range(rounds):
                base = window(empty, ifname, traffic, seconds)
                mark = window(marker, ifname, traffic, seconds)
                if not (base.runs and mark.runs and base.bytes and mark.bytes):
                    raise SystemExit(f"{row}: no traffic passed a classifier ({base}, {mark})")
                samples.append((base, mark))
    finally:
        traffic.close()
        for key in keys:
            flows.delete(key)
    ratios = [(m.run_ns / m.runs) / (e.run_ns / e.runs) for e, m in samples]
    cpu = [(m.cpu_s / m.bytes) / (e.cpu_s / e.bytes) for e, m in samples]
    return {
        "empty_ns": statistics.median(e.run_ns / e.runs for e, _ in samples),
        "marker_ns": statistics.median(m.run_ns / m.runs for _, m in samples),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "bytes_per_packet": statistics.median(m.bytes / m.runs for _, m in samples),
        "marker_cpu_s_per_gb": statistics.median(m.cpu_s / m.bytes * 1e9 for _, m in samples),
        "cpu_per_gb_ratio": statistics.median(cpu),
        "target": TARGETS[row],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=0.3, help="each program's time per round")
    parser.add_argument("--flows", type=int, default=10_000, help="other flows in the map")
    parser.add_argument("--rows", nargs="*", choices=ROWS, default=list(ROWS))
    parser.add_argument("--object", type=Path, help="marker object (default: the installed one)")
    parser.add_argument("--no-variants", action="store_true",
                        help="skip the builds that take the write apart")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)

    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    results: dict[str, dict[str, Any]] = {}
    variants: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp, bpf_stats(), Namespace() as a, Namespace() as b:
        ifname, peer = veth_pair(a, b, A, B)
        a.ip("addr", "add", f"{A4}/24", "dev", ifname)
        b.ip("addr", "add", f"{B4}/24", "dev", peer)
        marker_path = args.object or bundled_object()
        objects: dict[str, tuple[Path, bool]] = {"marker": (marker_path, True)}  # path, direct writer
        if not args.no_variants:
            objects[NO_WRITER] = (marker_path, False)
            for n, name in VARIANTS.items():
                workdir = Path(tmp) / f"write{n}"
                workdir.mkdir()
                objects[name] = (compile_bpf("marker", workdir, f"FLOWLABEL_BENCH_WRITE={n}"), True)
        with Program(baseline_object(bundled_object(), Path(tmp)), program="baseline_egress") as empty:
            for name, (path, writer) in objects.items():
                with Program(path, writer=writer) as marker:
                    if name == "marker":
                        writer_state = "on" if marker.writer is not None else f"off ({marker.writer_missing})"
                    fill(marker, args.flows, random.Random(5))
                    rows = args.rows if name == "marker" else [r for r in args.rows if r in VARIANT_ROWS]
                    found = {row: measure_row(row, a, b, ifname, marker, empty, args.rounds, args.seconds)
                             for row in rows}
                if name == "marker":
                    results = found
                else:
                    variants[name] = found

    print(f"real traffic over veth, {args.flows:,} other flows in the map, {args.rounds} rounds of "
          f"{args.seconds} s per program, CPU {cpu}, kernel {platform.release()}")
    print(f"direct writer {writer_state}")
    print(f"{'row':<14} {'empty ns':>9} {'marker ns':>10} {'ratio':>7} {'range':>12} {'B/skb':>7} "
          f"{'CPU/GB':>7} {'target':>8}")
    for row, r in results.items():
        r["met"] = r["ratio"] <= r["target"]
        spread = f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}x"
        print(f"{row:<14} {r['empty_ns']:>9.0f} {r['marker_ns']:>10.0f} {r['ratio']:>6.2f}x {spread:>12} "
              f"{r['bytes_per_packet']:>7.0f} {r['cpu_per_gb_ratio']:>6.3f}x {r['target']:>7.2f}x "
              f"{'PASS' if r['met'] else 'MISS'}")
    print("ns: per skb from the kernel's BPF statistics; CPU/GB: process CPU per GB moved, marker / empty")
    if variants:
        print("\nthe write taken apart (the marker without its direct writer; marker.bpf.c built with "
              "FLOWLABEL_BENCH_WRITE), ns per packet")
        print(f"{'build':<24}" + "".join(f"{row:>14}" for row in VARIANT_ROWS))
        print(f"{'the marker':<24}" + "".join(f"{results[row]['marker_ns']:>14.0f}" for row in VARIANT_ROWS
                                               if row in results))
        for name, found in variants.items():
            print(f"{name:<24}" + "".join(f"{found[row]['marker_ns']:>14.0f}" for row in VARIANT_ROWS
                                          if row in found))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"benchmark": "traffic", "kernel": platform.release(), "cpu": cpu,
                                         "rounds": args.rounds, "seconds": args.seconds, "flows": args.flows,
                                         "direct_writer": writer_state,
                                         "results": results, "write_variants": variants}, indent=2) + "\n")
    missed = [row for row, r in results.items() if not r["met"]]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
