"""The daemon's resident memory with 0, 25,000 and 131,072 active flows.

Usage::

    python tests/bench/bench_memory.py [--json OUT] [--strict]

Runs ``python -m flowlabel run`` (maxFlows 131,072, the default) in a private
network namespace and starts flows through the named pipe: UDP flows from the
loopback to 2,000 remote addresses, each with ports of its own, the mix a busy
data-transfer node sees. After each step it waits until the daemon has taken
every line and reads VmRSS. Target: at most 64 MB with 131,072 flows.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench_daemon import DaemonUnderTest, write_all

from support.netns import Namespace

STEPS = (0, 25_000, 131_072)
TARGET_RSS_MB = 64.0
PEERS = 2000


def flow_lines(first: int, last: int) -> bytes:
    return b"".join(
        f"start udp ::1 {1024 + i % 60000} 2001:db8::{1 + i % PEERS:x} {10000 + i // 60000} "
        f"{1 + i % 500} {i % 64}\n".encode() for i in range(first, last))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)

    figures: dict[str, float] = {}
    with Namespace() as ns, tempfile.TemporaryDirectory() as tmp:
        daemon = DaemonUnderTest(ns, Path(tmp), max_flows=STEPS[-1])
        daemon.start()
        try:
            done = 0
            for step in STEPS:
                if step > done:
                    write_all(daemon.pipe, flow_lines(done, step))
                    deadline = time.monotonic() + 120
                    while daemon.events() < step and time.monotonic() < deadline:
                        time.sleep(0.2)
                    if daemon.events() < step:
                        raise SystemExit(f"the daemon took only {daemon.events()} of {step} events")
                    done = step
                time.sleep(1.5)  # a state-file write with these flows, as in operation
                figures[f"rss_mb_{step}"] = daemon.memory()["VmRSS"]
        finally:
            daemon.stop()

    per_flow = (figures[f"rss_mb_{STEPS[-1]}"] - figures["rss_mb_0"]) * (1 << 20) / STEPS[-1]
    top = figures[f"rss_mb_{STEPS[-1]}"]
    ok = top <= TARGET_RSS_MB
    print(f"{'active flows':<14}{'RSS (MB)':>10}")
    for step in STEPS:
        print(f"{step:<14,}{figures[f'rss_mb_{step}']:>10.1f}")
    print(f"per flow: {per_flow:.0f} bytes; target <= {TARGET_RSS_MB:.0f} MB with {STEPS[-1]:,} flows: "
          f"{'PASS' if ok else 'MISS'}")
    if args.json:
        args.json.write_text(json.dumps({**figures, "bytes_per_flow": round(per_flow),
                                         "target_rss_mb": TARGET_RSS_MB}, indent=1))
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
