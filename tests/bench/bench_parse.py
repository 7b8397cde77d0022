"""Measure how fast the event parsers run on one core.

Usage::

    python tests/bench/bench_parse.py [--json OUT] [--repeat N] [--lines N] [--fireflies N]

Each case parses a prepared list of messages (flows repeat, as they do on a busy
server) and reports the best of ``--repeat`` runs in events per second, next to
the target rate. The exit status is 1 if any case misses its target.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

try:
    import flowlabel.events as events
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    import flowlabel.events as events

PIPE_TARGET = 200_000
FIREFLY_TARGET = 50_000


def _addresses(rng: random.Random, count: int) -> list[str]:
    out = []
    for i in range(count):
        if i % 4 == 0:
            out.append(f"192.0.2.{rng.randrange(1, 255)}" if i % 8 else f"198.51.100.{rng.randrange(1, 255)}")
        else:
            out.append(f"2001:db8:{rng.randrange(0x10000):x}::{rng.randrange(1, 0x10000):x}")
    return out


def _events(count: int, seed: int = 1) -> list[events.FlowEvent]:
    """``count`` events between a few hundred hosts, IPv6 mostly."""
    rng = random.Random(seed)
    v6 = [a for a in _addresses(rng, 400) if ":" in a]
    v4 = [a for a in _addresses(rng, 400) if ":" not in a]
    start = datetime(2024, 3, 28, 8, 58, 48, tzinfo=timezone.utc)
    out = []
    for i in range(count):
        pool = v4 if i % 5 == 0 else v6
        state = ("start", "ongoing", "end")[i % 3]
        begin = start + timedelta(seconds=i, microseconds=rng.randrange(1_000_000))
        out.append(
            events.FlowEvent.of(
                state,
                "tcp" if i % 7 else "udp",
                rng.choice(pool),
                rng.choice(pool),
                rng.randrange(1024, 65536),
                rng.choice((1094, 2811, 443, 8443)),
                rng.randrange(1, 15),
                rng.randrange(1, 27),
                begin,
                begin + timedelta(seconds=rng.randrange(1, 3600)) if state == "end" else None,
                "xrootd/5.6.9" if i % 2 else None,
            )
        )
    return out


def _best_rate(parse: Callable[[Any], object], inputs: Sequence[Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        for item in inputs:
            parse(item)
        best = min(best, time.perf_counter() - began)
    return len(inputs) / best


def run(lines: int, fireflies: int, repeat: int) -> list[dict[str, Any]]:
    pipe_inputs = [events.format_line(e) for e in _events(lines)]
    fly_events = _events(fireflies, seed=2)
    now = datetime(2024, 3, 28, 9, 0, tzinfo=timezone.utc)
    bare = [events.format_firefly(e, now=now) for e in fly_events]
    syslog = [
        events.format_firefly(e, syslog=True, hostname="xrootd.example.org", now=now) for e in fly_events
    ]
    cases: list[tuple[str, Callable[[Any], object], Sequence[Any], int]] = [
        ("pipe line (str)", events.parse_line, pipe_inputs, PIPE_TARGET),
        ("pipe line (bytes)", events.parse_line, [line.encode() for line in pipe_inputs], PIPE_TARGET),
        ("firefly, bare JSON", events.parse_firefly, bare, FIREFLY_TARGET),
        ("firefly, syslog header", events.parse_firefly, syslog, FIREFLY_TARGET),
    ]
    results = []
    for name, parse, inputs, target in cases:
        rate = _best_rate(parse, inputs, repeat)
        results.append(
            {
                "case": name,
                "events": len(inputs),
                "events_per_second": round(rate),
                "target": target,
                "ratio": round(rate / target, 2),
                "pass": rate >= target,
            }
        )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="OUT", type=Path, help="also write the results as JSON to OUT")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best counts (default 3)")
    parser.add_argument("--lines", type=int, default=200_000, help="pipe lines per run (default 200000)")
    parser.add_argument("--fireflies", type=int, default=50_000, help="fireflies per run (default 50000)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)

    results = run(args.lines, args.fireflies, args.repeat)
    print(f"{'case':<24} {'events/s':>12} {'target':>10} {'x target':>9}  result")
    for r in results:
        verdict = "PASS" if r["pass"] else "MISS"
        print(
            f"{r['case']:<24} {r['events_per_second']:>12,} {r['target']:>10,} {r['ratio']:>9.2f}  {verdict}"
        )
    if args.json:
        document = {
            "python": sys.version.split()[0],
            "platform": sys.platform,
            "repeat": args.repeat,
            "results": results,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 1 if args.strict and not all(r["pass"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
