"""The ``flowlabel`` command line (also ``python -m flowlabel``).

Exit status: 0 on success, 1 when the operation failed, 2 for a usage or
configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import __version__, logs
from .defaults import API_URL, LOG_LEVELS

if TYPE_CHECKING:
    from .api_client import ApiClient
    from .config import Config


class _Failure(Exception):
    """One line for stderr, and the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _flow_arguments(parser: argparse.ArgumentParser, *, ids_required: bool) -> None:
    parser.add_argument("protocol", metavar="PROTOCOL", help="tcp or udp")
    parser.add_argument("src", metavar="SRC_IP", help="source address (IPv6 flows are marked)")
    parser.add_argument("sport", metavar="SRC_PORT", type=int, help="source port")
    parser.add_argument("dst", metavar="DST_IP", help="destination address")
    parser.add_argument("dport", metavar="DST_PORT", type=int, help="destination port")
    nargs = None if ids_required else "?"
    parser.add_argument("experiment", metavar="EXPERIMENT", nargs=nargs, default="0",
                        help="experiment ID (0-511) or registry name")
    parser.add_argument("activity", metavar="ACTIVITY", nargs=nargs, default="0",
                        help="activity ID (0-63) or registry name")
    parser.add_argument("--application", help="name and version of the application behind the flow")
    _api_argument(parser)


def _api_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api", metavar="URL",
        help=f"the daemon's API, http://HOST:PORT or unix:PATH (default: plugins.api of --config, its "
             f"Unix socket first, else {API_URL})",
    )


def _global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--config", "--conf", "-c", metavar="FILE", default=default,
                        help="configuration file: flowlabel's or flowd-go's JSON, flowd-go 2.x's YAML "
                             "(/etc/flowd-go/conf.yaml) or flowd's flowd.cfg, by its name or content "
                             "(default: the built-in one: mark on lo, named pipe and API on loopback)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=default,
                        help="log level (default: info)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowlabel",
        description=(
            "Mark the IPv6 flow label of research-network transfers with SciTags experiment "
            "and activity IDs, using an eBPF classifier on the egress of network interfaces."
        ),
    )
    parser.add_argument("--version", action="version", version=f"flowlabel {__version__}")
    _global_options(parser, None)
    # The same options after the command (flowlabel run --config FILE) override these.
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    commands.add_parser(
        "run",
        parents=[common],
        help="run the daemon",
        description=(
            "Run the daemon in the foreground until SIGTERM or SIGINT: read flow events from the "
            "configured sources (named pipe, firefly listener, HTTP API), mark the flows' packets "
            "with the classifier, send fireflies and serve metrics. Active flows are kept in "
            "WORKDIR/flows.json and restored at the next start. Logs go to stderr; a line with "
            "'ready' says the daemon serves."
        ),
    )

    check = commands.add_parser(
        "check",
        parents=[common],
        help="check that this host can run the marker",
        description=(
            "Print the kernel release, the capabilities that matter (CAP_BPF, CAP_NET_ADMIN, "
            "CAP_PERFMON), the bundled libbpf version and each kernel feature the marker relies "
            "on (probed, not guessed from the version: memory-mappable arrays, batched map "
            "operations, TCX, how BPF memory is charged), then load the shipped classifier into "
            "the kernel and unload it. Exits non-zero with one line saying what is wrong when "
            "the marker cannot run here."
        ),
    )
    check.add_argument("--object", metavar="PATH", help="check this BPF object instead of the shipped one")

    commands.add_parser("version", parents=[common], help="print the version",
                        description="Print flowlabel's version.")

    label = commands.add_parser(
        "label",
        parents=[common],
        help="encode or decode a SciTags flow label",
        description="Build the 20-bit flow label for an experiment and activity, or take one apart.",
    )
    label_commands = label.add_subparsers(dest="label_command", metavar="ACTION", required=True)
    encode = label_commands.add_parser(
        "encode",
        parents=[common],
        help="experiment and activity to flow label",
        description=(
            "Print the flow label for EXPERIMENT and ACTIVITY (IDs, or names from the registry). "
            "The five entropy bits are random unless --entropy gives them."
        ),
    )
    encode.add_argument("experiment", metavar="EXPERIMENT", help="experiment ID (0-511) or name")
    encode.add_argument("activity", metavar="ACTIVITY", help="activity ID (0-63) or name")
    encode.add_argument("--entropy", type=int, metavar="N", help="the entropy bits, 0-31")
    encode.add_argument("--json", action="store_true", help="print a JSON object")
    decode = label_commands.add_parser(
        "decode",
        parents=[common],
        help="flow label to experiment, activity and entropy",
        description="Take a flow label apart (decimal, or hexadecimal with 0x) and name its "
                    "experiment and activity when the registry knows them.",
    )
    decode.add_argument("label", metavar="LABEL", help="the 20-bit flow label, e.g. 0x1003c or 65596")
    decode.add_argument("--json", action="store_true", help="print a JSON object")

    flows = commands.add_parser(
        "flows",
        parents=[common],
        help="list the active flows of a running daemon",
        description="Ask a running daemon (through its HTTP API) which flows it marks, with their labels, "
                    "and, when it has site rules, how many packets each rule decided.",
    )
    _api_argument(flows)
    flows.add_argument("--json", action="store_true", help="print the API's JSON answer")

    start = commands.add_parser(
        "start",
        parents=[common],
        help="send a flow start event to a running daemon",
        description=(
            "Tell a running daemon (through its HTTP API) that a flow started, in the named pipe's "
            "field order, e.g.: flowlabel start tcp 2001:db8::1 2345 2001:db8::2 5777 2 15"
        ),
    )
    _flow_arguments(start, ids_required=True)
    end = commands.add_parser(
        "end",
        parents=[common],
        help="send a flow end event to a running daemon",
        description=(
            "Tell a running daemon (through its HTTP API) that a flow ended, e.g.: "
            "flowlabel end tcp 2001:db8::1 2345 2001:db8::2 5777 (experiment and activity may follow)"
        ),
    )
    _flow_arguments(end, ids_required=False)

    from .top import SORTS

    top = commands.add_parser(
        "top",
        parents=[common],
        help="a live view of a running daemon's flows",
        description=(
            "Show the flows a running daemon marks, refreshed every --interval seconds, in the manner "
            "of top: experiment and activity names, label, addresses, and for TCP flows with a socket "
            "on the daemon's host the rate (bytes acknowledged and received per second), RTT and "
            "retransmissions. Keys: r rate, t RTT, x retransmissions, e experiment, s start (sort); "
            "q quits. `flowlabel flows --json` carries the same numbers."
        ),
    )
    _api_argument(top)
    top.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between refreshes")
    top.add_argument("--sort", choices=sorted(SORTS), default="r",
                     help="the first order: r rate, t RTT, x retransmissions, e experiment, s start")

    config = commands.add_parser(
        "config",
        parents=[common],
        help="print the effective configuration and where each value came from",
        description=(
            "Read the configuration (--config: flowlabel's or flowd-go 1.x's JSON, flowd-go 2.x's "
            "YAML or flowd's flowd.cfg; without it the built-in one) as `run` would, and print every "
            "setting with its value and where it came from: a line of the file, the defaults of the "
            "format, or flowlabel's default (flowd-go's `conf`). Exits 2 with the key's path when the "
            "configuration is invalid."
        ),
    )
    config.add_argument("--json", action="store_true",
                        help="print the effective configuration as one JSON object instead")

    cleanup = commands.add_parser(
        "cleanup",
        parents=[common],
        help="remove what a killed marker left on the interfaces",
        description=(
            "Remove the classifier filters and clsact qdiscs that a flowlabel marker left behind when "
            "it was killed (flowd-go's `marker clean`), in this network namespace. Only flowlabel's "
            "filter (its program at flowlabel's handle and priority) and a qdisc that a flowlabel "
            "marker recorded creating are touched; other filters and qdiscs, and interfaces that a "
            "running marker holds, are left as they are. Prints one line per thing found."
        ),
    )
    cleanup.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    cleanup.add_argument("interfaces", metavar="INTERFACE", nargs="*",
                         help="only these interfaces (default: all)")
    return parser


# -- commands ------------------------------------------------------------------------------------


def _load_config(path: str | None, *, trusted: bool = False) -> Config:
    from .config import ConfigError, load

    try:
        return load(path, trusted=trusted)
    except ConfigError as exc:
        raise _Failure(f"configuration: {exc}", 2) from None


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from .config import ConfigError, load_reading
    from .daemon import Daemon
    from .service import StartupError

    try:
        config, reading = load_reading(args.config, trusted=True)
    except ConfigError as exc:
        raise _Failure(f"configuration: {exc}", 2) from None
    logs.setup(args.log_level or config.log_level or "info")
    for warning in reading.warnings:
        logging.getLogger("flowlabel").warning("configuration %s: %s", args.config, warning)
    daemon = Daemon(config)
    try:
        asyncio.run(daemon.run())
    except StartupError as exc:
        logging.getLogger("flowlabel").error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _registry(config_path: str | None) -> Any:
    from .registry import Registry, RegistryError

    source = _load_config(config_path).registry if config_path else None
    try:
        return Registry.load(source, timeout=5.0)
    except RegistryError as exc:
        raise _Failure(f"registry: {exc}") from None


def _label(args: argparse.Namespace) -> int:
    from . import label as codec
    from .registry import RegistryError

    registry = _registry(args.config)
    if args.label_command == "encode":
        try:
            experiment, activity = registry.resolve(args.experiment, args.activity)
            value = codec.encode(experiment, activity, args.entropy)
        except (RegistryError, codec.LabelError) as exc:
            raise _Failure(str(exc), 2) from None
    else:
        text = args.label.strip().lower()
        digits = text[2:] if text.startswith("0x") else text
        # ASCII digits only: int() also takes "1_0" and other scripts' digits.
        if not (digits.isascii() and digits.isalnum() and len(digits) <= 8):
            raise _Failure(f"not a flow label: {args.label!r} (write decimal digits or 0x and hex digits)", 2)
        try:
            value = int(digits, 16) if text.startswith("0x") else int(digits, 10)
            codec.decode(value)
        except ValueError as exc:
            raise _Failure(f"not a flow label: {args.label!r} ({exc})", 2) from None
    parts = codec.decode(value)
    names = _names(registry, parts.experiment, parts.activity)
    if args.json:
        print(json.dumps({"label": value, "hex": f"{value:#07x}", **parts._asdict(), **names}))
    else:
        exp_name = f" ({names['experiment_name']})" if names.get("experiment_name") else ""
        act_name = f" ({names['activity_name']})" if names.get("activity_name") else ""
        print(f"label {value:#07x} ({value}): experiment {parts.experiment}{exp_name}, "
              f"activity {parts.activity}{act_name}, entropy {parts.entropy}")
    return 0


def _names(registry: Any, experiment: int, activity: int) -> dict[str, str]:
    from .registry import RegistryError

    names: dict[str, str] = {}
    try:
        exp = registry.experiment(experiment)
        names["experiment_name"] = exp.name
        names["activity_name"] = exp.activity(activity).name
    except RegistryError:
        pass
    return names


def _client(args: argparse.Namespace) -> ApiClient:
    from .api_client import DEFAULT_URL, ApiClient, ApiError
    from .sources.api import read_token

    url, token = args.api, None
    if url is None and args.config is not None:
        api = _load_config(args.config).plugins.api
        if api is None:
            raise _Failure(f"{args.config} has no plugins.api: the daemon has no API to talk to", 2)
        if api.unix_socket is not None:
            url = f"unix:{api.unix_socket}"  # guarded by the file's mode: no token needed
        else:
            assert api.bind_address is not None  # the configuration has one or the other
            host = f"[{api.bind_address}]" if ":" in api.bind_address else api.bind_address
            if api.bind_address in ("0.0.0.0", "::"):
                host = "127.0.0.1" if api.bind_address == "0.0.0.0" else "[::1]"
            url = f"http://{host}:{api.bind_port}"
            if api.token_file is not None:
                try:
                    token = read_token(api.token_file)
                except OSError as exc:
                    raise _Failure(f"cannot read the API token: {exc}", 2) from None
    try:
        return ApiClient(url or DEFAULT_URL, token=token)
    except ApiError as exc:
        raise _Failure(str(exc), 2) from None


def _flows(args: argparse.Namespace) -> int:
    from .api_client import ApiError

    try:
        listing = _client(args).listing()
    except ApiError as exc:
        raise _Failure(str(exc)) from None
    flows, rules = listing["flows"], listing.get("rules") or []
    if args.json:
        print(json.dumps({"flows": flows, "rules": rules}, indent=1))
        return 0
    if not flows:
        print("no active flows")
    else:
        rows = [("PROTO", "SOURCE", "DESTINATION", "EXP", "ACT", "LABEL", "RTT MS", "RETRANS", "SINCE")]
        for f in flows:
            src = f"[{f['src_ip']}]:{f['src_port']}"
            dst = f"[{f['dst_ip']}]:{f['dst_port']}"
            tcp = f.get("tcp") or {}
            rtt = f"{tcp['rtt_us'] / 1000:.3f}" if tcp.get("rtt_us") is not None else "-"
            retrans = str(tcp["total_retrans"]) if tcp.get("total_retrans") is not None else "-"
            rows.append((f["protocol"], src, dst, str(f["experiment"]), str(f["activity"]),
                         f"{f['label']:#07x}", rtt, retrans, f.get("start_time") or "-"))
        _print_table(rows)
    if rules:
        print()
        _print_table([("RULE", "PACKETS", "MATCHES"),
                      *((r["rule"], str(r["packets"]), r["description"]) for r in rules)])
    return 0


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _event(args: argparse.Namespace) -> int:
    from .api_client import ApiError

    document: dict[str, Any] = {
        "protocol": args.protocol,
        "src_ip": args.src,
        "src_port": args.sport,
        "dst_ip": args.dst,
        "dst_port": args.dport,
        # As given: the daemon reads decimal text as an ID and anything else as a name, and
        # names what it refuses.
        "experiment": args.experiment,
        "activity": args.activity,
    }
    if args.application:
        document["application"] = args.application
    client = _client(args)
    try:
        answer = client.start(document) if args.command == "start" else client.end(document)
    except ApiError as exc:
        raise _Failure(str(exc), 2 if exc.status == 400 else 1) from None
    flow = answer["flow"]
    label = flow.get("label")
    detail = f", label {label:#07x}" if isinstance(label, int) else ""
    print(f"{answer['outcome']}: {flow['protocol']} [{flow['src_ip']}]:{flow['src_port']} -> "
          f"[{flow['dst_ip']}]:{flow['dst_port']}, experiment {flow['experiment']}, "
          f"activity {flow['activity']}{detail}")
    return 0


def _config(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_reading
    from .config.show import effective, render
    from .registry import Registry, RegistryError
    from .rules import compile_rules, from_config

    try:
        # As `run` reads it: a file every user may write is refused, and so are site rules
        # that name what the registry does not have or that the classifier cannot hold.
        config, reading = load_reading(args.config, trusted=True)
        if config.rules or config.plugins.iperf3 is not None or config.plugins.perfsonar is not None:
            try:
                registry = Registry.load(config.registry, timeout=5.0)
            except RegistryError as exc:
                reading.warnings.append(f"the site rules were not checked: registry: {exc}")
            else:
                compile_rules(from_config(config, registry))
    except ConfigError as exc:
        raise _Failure(f"configuration: {exc}", 2) from None
    if args.json:
        print(json.dumps(effective(config), indent=1))
        return 0
    for warning in reading.warnings:
        print(f"# warning: {warning}")
    print("\n".join(render(config, reading)))
    return 0


def _top(args: argparse.Namespace) -> int:
    from .api_client import ApiError
    from .top import run

    if not (args.interval > 0 and math.isfinite(args.interval)):
        raise _Failure(f"--interval must be a positive number of seconds, not {args.interval}", 2)
    client = _client(args)
    registry = _registry(args.config)

    def names(experiment: int, activity: int) -> tuple[str, str]:
        found = _names(registry, experiment, activity)
        return (found.get("experiment_name", str(experiment)), found.get("activity_name", str(activity)))

    try:
        client.flows()  # fail here, with one line, when the daemon cannot be reached
    except ApiError as exc:
        raise _Failure(str(exc)) from None
    run(client.flows, names, args.interval, args.sort)
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    from .cleanup import cleanup
    from .errors import InterfaceError, MarkerError

    try:
        found = cleanup(dry_run=args.dry_run, interfaces=args.interfaces or None)
    except MarkerError as exc:
        raise _Failure(f"cleanup: {exc}", 2 if isinstance(exc, InterfaceError) else 1) from None
    for leftover in found:
        print(leftover)
    if not any(leftover.action != "kept" for leftover in found):
        print("nothing of flowlabel's to remove")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "check":
            from .check import main as check_main

            return check_main(args.object)
        if args.command == "version":
            print(f"flowlabel {__version__}")
            return 0
        if args.command == "label":
            return _label(args)
        if args.command == "flows":
            return _flows(args)
        if args.command in ("start", "end"):
            return _event(args)
        if args.command == "top":
            return _top(args)
        if args.command == "config":
            return _config(args)
        if args.command == "cleanup":
            return _cleanup(args)
    except _Failure as exc:
        print(f"flowlabel: {exc}", file=sys.stderr)
        return exc.status
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
