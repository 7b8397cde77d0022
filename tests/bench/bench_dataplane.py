"""TCP throughput over veth with and without the classifier (10,000 flows in the map).

Target: the marked transfer keeps >= 99 % of its throughput. Prints the figures
and, with ``--json OUT``, writes them.
"""

from __future__ import annotations

import argparse
import json
import sys

from support.dataplane import measure

TARGET = 0.99


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", metavar="OUT")
    parser.add_argument("--windows", type=int, default=60, help="windows each way (default 60)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if the target is missed")
    args = parser.parse_args()
    figures = measure(args.windows, 0.25)
    for key, value in figures.items():
        print(f"{key:<42}{value:>14,.3f}" if isinstance(value, float) else f"{key:<42}{value:>14,}")
    ratio = figures["ratio of medians with/without"]
    met = ratio >= TARGET
    print(f"{'target':<42}{'>= 0.990':>14}  {'PASS' if met else 'MISS'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
