"""The ``flowlabel`` command line (also ``python -m flowlabel``)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowlabel",
        description=(
            "Mark the IPv6 flow label of research-network transfers with SciTags experiment "
            "and activity IDs, using an eBPF classifier on the egress of network interfaces."
        ),
    )
    parser.add_argument("--version", action="version", version=f"flowlabel {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = commands.add_parser(
        "check",
        help="check that this host can run the marker",
        description=(
            "Print the kernel release, BTF availability, the capabilities that matter "
            "(CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON) and the bundled libbpf version, then load "
            "the shipped classifier into the kernel and unload it. Exits non-zero with one line "
            "saying what is wrong when the marker cannot run here."
        ),
    )
    check.add_argument("--object", metavar="PATH", help="check this BPF object instead of the shipped one")

    commands.add_parser("version", help="print the version", description="Print flowlabel's version.")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "check":
        from .check import main as check_main

        return check_main(args.object)
    if args.command == "version":
        print(f"flowlabel {__version__}")
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
