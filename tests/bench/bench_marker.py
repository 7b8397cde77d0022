"""Loader figures: map updates per second from Python and the time to open, load and attach.

Runs in a private network namespace on its loopback. Prints a table and, with
``--json OUT``, writes the figures. Targets: >= 200,000 single updates/s and
open+load+attach <= 50 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from flowlabel.flow import Flow
from flowlabel.marker import Marker
from support.netns import Namespace

FLOWS = 100_000
TARGET_UPDATES = 200_000
TARGET_ATTACH_MS = 50.0


def flows(n: int, dport: int) -> list[Flow]:
    return [Flow.of("tcp", "::1", "::1", 1024 + i % 60000, dport + i // 60000) for i in range(n)]


def rate(fn, items) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", metavar="OUT")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    figures: dict[str, float] = {}
    with Namespace() as ns, ns.entered():
        attach_ms = []
        for mode in ("tcx", "tc"):
            times = []
            for _ in range(7):
                started = time.perf_counter()
                marker = Marker(["lo"], attach=mode)
                times.append((time.perf_counter() - started) * 1000)
                marker.close()
            figures[f"open_load_attach_ms_{mode}"] = statistics.median(times)
            attach_ms.extend(times)

        marker = Marker(["lo"], max_flows=2 * FLOWS)
        batch = flows(FLOWS, 10000)
        label = 0x12345
        figures["single_add_per_s"] = rate(lambda f: marker.add(f, label), batch)
        figures["single_refresh_per_s"] = rate(lambda f: marker.add(f, label + 1), batch)
        figures["single_remove_per_s"] = rate(marker.remove, batch)
        started = time.perf_counter()
        marker.add_many((f, label) for f in batch)
        figures["batch_add_per_s"] = FLOWS / (time.perf_counter() - started)
        marker.close()

    rows = [
        ("single add (new flow)", figures["single_add_per_s"], f">= {TARGET_UPDATES:,}/s",
         figures["single_add_per_s"] >= TARGET_UPDATES),
        ("single refresh", figures["single_refresh_per_s"], "", None),
        ("single remove", figures["single_remove_per_s"], "", None),
        ("batched add", figures["batch_add_per_s"], "", None),
    ]
    print(f"{'map updates from Python':<28}{'per second':>14}  target")
    for name, value, target, ok in rows:
        verdict = "" if ok is None else ("PASS" if ok else "MISS")
        print(f"{name:<28}{value:>14,.0f}  {target} {verdict}")
    print(f"{'open+load+attach':<28}{'median ms':>14}  target")
    for mode in ("tcx", "tc"):
        ms = figures[f"open_load_attach_ms_{mode}"]
        print(f"{mode:<28}{ms:>14.1f}  <= {TARGET_ATTACH_MS:.0f} ms "
              f"{'PASS' if ms <= TARGET_ATTACH_MS else 'MISS'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    met = figures["single_add_per_s"] >= TARGET_UPDATES and all(
        figures[f"open_load_attach_ms_{mode}"] <= TARGET_ATTACH_MS for mode in ("tcx", "tc"))
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
