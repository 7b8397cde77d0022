"""The cost of site rules for packets that no rule matches, with BPF_PROG_TEST_RUN.

Usage::

    python tests/bench/bench_rules.py [--json OUT] [--rounds N] [--repeat N] [--strict]

Markers with 0, 10 and 1,000 rules (and 10,000 flows in the map) run on a
74-byte IPv6 TCP frame of a flow not in the map, whose filter bit is clear:

- ports: ports that no rule allows (the rules' port classes decide);
- prefix: the ports of one rule, whose remote prefix the packet misses (the
  candidate list is looked up and the rule's prefixes compared).

Rule i allows local port 20000 + i to the remote prefix 2001:db8:99::/48;
with 0 rules the same packets take the classifier's plain miss. Each
measurement is taken between two runs of the empty classifier on the same
frame (the ratio to their mean), medians over ``--rounds``. Targets: with
1,000 rules, each case at most 1.5 times the plain miss of the same run, and
the plain miss at most 1.3 times the empty program (as bench_classifier's).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import random
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "kernel"))

import packets  # noqa: E402
from bench_classifier import DST, SPORT, SRC, Sample, baseline_object, fill, measure, summary  # noqa: E402

from flowlabel.marker import Program, bundled_object  # noqa: E402
from flowlabel.rules import PortRange, Rule, compile_rules  # noqa: E402

COUNTS = (0, 10, 1000)
CASES = ("ports", "prefix")
RULE_TARGET = 1.5  # times the plain miss
MISS_TARGET = 1.3  # times the empty program
FIRST_PORT = 20000
ELSEWHERE = ipaddress.IPv6Network("2001:db8:99::/48")


def rules(count: int) -> list[Rule]:
    return [Rule(f"rules[{i}]", ((2, 15),), 6, PortRange(FIRST_PORT + i, FIRST_PORT + i),
                 remote_net=ELSEWHERE) for i in range(count)]


def frame(program: Program, sport: int) -> bytes:
    """A frame from ``sport`` of a flow not in the map whose filter bit is clear (no map lookup)."""
    flows = program.flows
    assert flows is not None
    for dport in range(5002, 1 << 16):
        key = flows.key(packets.IPPROTO_TCP, SRC, DST, sport, dport)
        if flows.get(key) is None and not flows.filter_has(flows.filter_slot(key)):
            return packets.ethernet(packets.ipv6(SRC, DST, packets.IPPROTO_TCP, packets.tcp(sport, dport)))
    raise SystemExit("no port with a clear filter bit")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--repeat", type=int, default=1_000_000)
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    samples: dict[tuple[int, str], list[Sample]] = {(n, case): [] for n in COUNTS for case in CASES}
    with tempfile.TemporaryDirectory() as tmp, \
            Program(baseline_object(bundled_object(), Path(tmp)), program="baseline_egress") as empty:
        markers = {n: Program(rules=compile_rules(rules(n)) if n else None) for n in COUNTS}
        try:
            for marker in markers.values():
                fill(marker, 10_000, random.Random(4))  # the same flows, so the same filter bits
            frames = {"ports": frame(markers[0], SPORT), "prefix": frame(markers[0], FIRST_PORT)}
            for marker in markers.values():
                for data in frames.values():
                    assert marker.test_run(data).data == data  # not marked: no rule matches
                    marker.test_run(data, 1000)
            for _ in range(args.rounds):
                for n, marker in markers.items():
                    for case, data in frames.items():
                        samples[(n, case)].append(measure(marker, empty, data, args.repeat))
            empty_ns = statistics.median(empty.test_run(frames["ports"], args.repeat).duration_ns
                                         for _ in range(3))
            infos = {n: marker.info() for n, marker in markers.items()}
        finally:
            for marker in markers.values():
                marker.close()

    results: dict[str, dict[str, Any]] = {}
    for (n, case), found in samples.items():
        results[f"{n}_rules_{case}"] = summary(found)
    plain = results["0_rules_ports"]["ratio"]
    results["0_rules_ports"]["target"] = MISS_TARGET
    results["0_rules_ports"]["met"] = plain <= MISS_TARGET
    for case in CASES:
        result = results[f"1000_rules_{case}"]
        result["target"] = round(RULE_TARGET * plain, 3)
        result["met"] = result["ratio"] <= result["target"]
    print(f"site rules, a TCP packet no rule matches, {args.repeat} repeats x {args.rounds} rounds on "
          f"CPU {cpu}, kernel {platform.release()}; empty classifier {empty_ns} ns")
    print(f"{'rules':>6} {'case':<8} {'ns/pkt':>7} {'ratio':>7} {'range':>12} {'insns':>7} {'target':>9}")
    for (n, case) in samples:
        r = results[f"{n}_rules_{case}"]
        spread = f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}x"
        verdict = f"{r['target']:>8.2f}x {'PASS' if r['met'] else 'MISS'}" if "target" in r else ""
        insns = infos[n].xlated_bytes // 8
        print(f"{n:>6} {case:<8} {r['ns']:>7} {r['ratio']:>6.2f}x {spread:>12} {insns:>7} {verdict}")
    print("ports: no rule allows the packet's ports; prefix: one rule's ports, not its remote prefix")
    print(f"targets: 0 rules <= {MISS_TARGET}x the empty program; "
          f"1,000 rules <= {RULE_TARGET}x the 0-rule miss")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"benchmark": "rules", "kernel": platform.release(), "cpu": cpu,
                                         "repeat": args.repeat, "rounds": args.rounds, "empty_ns": empty_ns,
                                         "results": results}, indent=2) + "\n")
    missed = [name for name, r in results.items() if "met" in r and not r["met"]]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
