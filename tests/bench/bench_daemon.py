"""The daemon's figures: pipe events into the map per second, event-to-map latency, start-up, memory.

Usage::

    python tests/bench/bench_daemon.py [--json OUT] [--events N] [--window N] [--seconds S] [--starts N]

Runs ``python -m flowlabel run`` as a subprocess in a private network namespace,
marking on its loopback, and measures:

* throughput: ``--events`` start and end lines written to the named pipe as
  fast as it takes them, flows starting and ending so that at most
  ``--window`` are active at once; the time until the daemon has taken every
  line, in events per second;
* latency at 1,000 events/s for ``--seconds``: one start line per millisecond,
  each timed from the write until its key is in the classifier's map (read
  with a duplicate of the daemon's map descriptor, obtained with pidfd_getfd);
* start-up: process start to the "ready" log line, the median of ``--starts``;
* memory: VmRSS and VmHWM of the daemon, idle and after the runs.

Targets: >= 50,000 events/s, p99 <= 2 ms, ready <= 0.3 s, RSS <= 60 MB. The
exit status is 1 if any is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flowlabel.api_client import ApiClient
from flowlabel.bpf.ext import key_struct
from support.daemon_map import flow_map_fd
from support.netns import WITH_CGROUP2, Namespace

TARGET_RATE = 50_000
TARGET_P99_MS = 2.0
TARGET_READY_S = 0.3
TARGET_RSS_MB = 60.0

LOOPBACK = socket.inet_pton(socket.AF_INET6, "::1")


class DaemonUnderTest:
    def __init__(self, ns: Namespace, root: Path, max_flows: int) -> None:
        self.ns = ns
        self.root = root
        self.pipe = root / "np"
        self.config = root / "flowlabel.json"
        self.config.write_text(json.dumps({
            "pidPath": str(root / "flowlabel.pid"),
            "workDir": str(root / "work"),
            "summaryInterval": 0,
            "saveInterval": 1.0,
            "plugins": {"namedPipe": {"pipePath": str(self.pipe)}, "api": {}},
            "backends": {"ebpf": {"targetInterface": "lo", "maxFlows": max_flows}},
        }))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start the daemon; seconds from process start to its ready line."""
        state = self.root / "work" / "flows.json"
        if state.exists():
            state.unlink()
        began = time.perf_counter()
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", self.ns.name, *WITH_CGROUP2, sys.executable, "-m", "flowlabel",
             "--config", str(self.config), "run"],
            stderr=subprocess.PIPE,
        )
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            if b" ready: " in raw:
                ready = time.perf_counter() - began
                os.set_blocking(self.process.stderr.fileno(), False)
                return ready
        raise RuntimeError(f"the daemon exited with {self.process.wait()} before it was ready")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None

    def memory(self) -> dict[str, float]:
        assert self.process is not None
        out = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value, _ = line.split()
                out[name.rstrip(":")] = int(value) / 1024
        return out

    def events(self) -> int:
        """Events the daemon has taken so far."""
        with self.ns.entered():
            count: int = ApiClient("http://127.0.0.1:7777").health()["events"]
        return count

    def map_fd(self) -> int:
        """A descriptor of the daemon's flow map in this process."""
        assert self.process is not None
        return flow_map_fd(self.process.pid)


def lines(count: int, state: str, offset: int = 0) -> list[bytes]:
    """``count`` distinct loopback flows."""
    out = []
    for i in range(offset, offset + count):
        sport, dport = 1024 + i % 60000, 10000 + i // 60000
        out.append(f"{state} tcp ::1 {sport} ::1 {dport} {1 + i % 500} {i % 64}\n".encode())
    return out


def write_all(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[: 1 << 16]) :]
    finally:
        os.close(fd)


def throughput(daemon: DaemonUnderTest, events: int, window: int) -> dict[str, float]:
    """Flows that start and end: flow i starts, flow i - ``window`` ends, ``events`` lines in all."""
    starts = lines(events // 2, "start")
    ends = lines(events // 2, "end")
    stream = []
    for i, line in enumerate(starts):
        stream.append(line)
        if i >= window:
            stream.append(ends[i - window])
    stream.extend(ends[len(starts) - window :])
    data = b"".join(stream)
    before = daemon.events()
    began = time.perf_counter()
    write_all(daemon.pipe, data)
    while daemon.events() < before + len(stream):
        time.sleep(0.01)
    elapsed = time.perf_counter() - began
    return {"events": len(stream), "seconds": elapsed, "events_per_second": len(stream) / elapsed,
            "active_flows_at_most": window}


def latency(daemon: DaemonUnderTest, seconds: float, rate: int = 1000) -> dict[str, float]:
    from flowlabel._bpf import ffi, lib  # type: ignore[attr-defined]

    fd = daemon.map_fd()
    pack_key = key_struct(ffi).pack
    value = ffi.new("struct flow_value *")
    samples = []
    pipe = os.open(daemon.pipe, os.O_WRONLY)
    try:
        count = int(seconds * rate)
        period = 1.0 / rate
        began = time.perf_counter()
        for i, line in enumerate(lines(count, "start", offset=500_000)):
            next_at = began + i * period
            while time.perf_counter() < next_at:
                pass
            n = 500_000 + i
            key = pack_key(LOOPBACK, LOOPBACK, 1024 + n % 60000, 10000 + n // 60000, 6)
            sent = time.perf_counter()
            os.write(pipe, line)
            deadline = sent + 1.0
            while lib.bpf_map_lookup_elem(fd, key, value) != 0:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"event {i} did not reach the map within a second")
            samples.append((time.perf_counter() - sent) * 1000)
        elapsed = time.perf_counter() - began
    finally:
        os.close(pipe)
        os.close(fd)
    samples.sort()
    return {
        "events": len(samples),
        "events_per_second": len(samples) / elapsed,
        "p50_ms": statistics.median(samples),
        "p99_ms": samples[int(len(samples) * 0.99) - 1],
        "max_ms": samples[-1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="OUT", type=Path, help="also write the figures as JSON to OUT")
    parser.add_argument("--events", type=int, default=400_000, help="pipe lines in the throughput run")
    parser.add_argument("--window", type=int, default=20_000,
                        help="flows active at once in the throughput run (default 20000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the latency run")
    parser.add_argument("--starts", type=int, default=5, help="starts to time (the median counts)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)

    figures: dict[str, Any] = {}
    with Namespace() as ns, tempfile.TemporaryDirectory(prefix="flowlabel-bench-") as tmp:
        daemon = DaemonUnderTest(ns, Path(tmp), max_flows=args.window + 50_000)
        starts = []
        for _ in range(args.starts):
            starts.append(daemon.start())
            daemon.stop()
        figures["ready_seconds"] = statistics.median(starts)
        figures["ready_seconds_all"] = starts
        try:
            daemon.start()
            figures["idle_memory_mb"] = daemon.memory()
            figures["throughput"] = throughput(daemon, args.events, args.window)
            figures["latency_at_1000_per_second"] = latency(daemon, args.seconds)
            figures["memory_mb"] = daemon.memory()
        finally:
            daemon.stop()

    rate = figures["throughput"]["events_per_second"]
    lat = figures["latency_at_1000_per_second"]
    rss = max(figures["memory_mb"]["VmHWM"], figures["idle_memory_mb"]["VmHWM"])
    checks = [
        ("pipe events into the map (events/s)", rate, TARGET_RATE, rate >= TARGET_RATE, "{:,.0f}", ">="),
        ("event-to-map p99 at 1,000/s (ms)", lat["p99_ms"], TARGET_P99_MS, lat["p99_ms"] <= TARGET_P99_MS,
         "{:.3f}", "<="),
        ("start to ready (s)", figures["ready_seconds"], TARGET_READY_S,
         figures["ready_seconds"] <= TARGET_READY_S, "{:.3f}", "<="),
        ("peak resident memory (MB)", rss, TARGET_RSS_MB, rss <= TARGET_RSS_MB, "{:.1f}", "<="),
    ]
    print(f"{'figure':<38} {'value':>12} {'target':>12}  result")
    for name, value, target, ok, fmt, op in checks:
        verdict = "PASS" if ok else "MISS"
        print(f"{name:<38} {fmt.format(value):>12} {op + ' ' + fmt.format(target):>12}  {verdict}")
    t = figures["throughput"]
    print(f"  throughput: {t['events']:,} start and end lines in {t['seconds']:.2f} s, "
          f"at most {args.window:,} flows active")
    print(f"  latency: p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms, max {lat['max_ms']:.3f} ms "
          f"({lat['events']} events at {lat['events_per_second']:,.0f}/s)")
    print(f"  memory: idle RSS {figures['idle_memory_mb']['VmRSS']:.1f} MB; after the runs "
          f"({args.window + lat['events']:,} flows active) RSS {figures['memory_mb']['VmRSS']:.1f} MB, "
          f"peak {figures['memory_mb']['VmHWM']:.1f} MB")
    print("  ready: " + ", ".join(f"{s:.3f}" for s in starts) + " s")
    if args.json:
        figures["targets"] = {"events_per_second": TARGET_RATE, "p99_ms": TARGET_P99_MS,
                              "ready_seconds": TARGET_READY_S, "rss_mb": TARGET_RSS_MB}
        figures["pass"] = all(ok for *_, ok, _, _ in checks)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if args.strict and not all(ok for *_, ok, _, _ in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
