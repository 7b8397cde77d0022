"""The cost of per-flow TCP statistics: one sweep of 10,000 active TCP flows.

Usage::

    python tests/bench/bench_telemetry.py [--json OUT] [--flows N] [--sweeps N]

Opens ``--flows`` TCP connections from namespace a to namespace b over a veth
pair (the server holds its ends in a process of its own), then times, in a, a
sweep of every socket's ``tcp_info`` by sock_diag (:func:`flowlabel.tcpinfo.sweep`)
and the matching of each flow to its socket, as ``GET /flows`` does. The figure
is the CPU a refresh of every flow once a second would take, in percent of one
core, from the median of ``--sweeps``. Target: <= 5 %.

The same sweep by a BPF iterator (bpf/tcpstats.bpf.c, tests/bench/tcpstats_iterator.py)
is timed in the same rounds, interleaved, after checking that both read the same
numbers: the measurement that decides which of the two the daemon uses.

A second figure, without a target: the CPU of one round of enriched ongoing
fireflies (``enrich``) for the same flows, in each enrichment mode, written and
sent to a local UDP socket.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tcpstats_iterator import TcpStatsIterator

from flowlabel import config, tcpinfo
from flowlabel.backends.firefly import FireflyBackend
from flowlabel.events import FlowEvent
from flowlabel.flow import Flow
from flowlabel.flowmetrics import FlowMetrics
from flowlabel.flowtable import FlowTable
from support.connections import held_connections
from support.netns import A, B, Pair

TARGET_PERCENT = 5.0
PORT = 7000



def enriched_rounds(flows: list[Flow]) -> dict[str, float]:
    """CPU seconds of one round of ongoing fireflies for ``flows``, by enrichment mode (median of 3)."""
    table = FlowTable()
    for flow in flows:
        table.apply(FlowEvent.of("start", flow.protocol, str(flow.src), str(flow.dst), flow.sport, flow.dport,
                                 2, 15), "bench")
    sink = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sink.bind(("::1", 0))
    costs = {}
    for mode in ("lean", "compatible", ""):
        keys = {"sendToDestination": False, "sendToCollector": True, "collectorAddress": "::1",
                "collectorPort": sink.getsockname()[1], "enrich": True, "enrichmentMode": mode}
        sender = config.parse({"backends": {"firefly": keys}}).backends.firefly
        assert sender is not None
        backend = FireflyBackend(sender)
        backend.start()
        rounds = []
        for _ in range(3):
            began = time.process_time()
            sent = backend.ongoing(table)
            rounds.append(time.process_time() - began)
        assert sent == len(table), sent
        backend.stop()
        costs[mode] = statistics.median(rounds)
    sink.close()
    return costs


def sending_floor(count: int) -> float:
    """CPU seconds to send ``count`` prepared 600-byte datagrams to loopback: what any round of
    fireflies, one datagram per flow, costs before a single byte is encoded (median of 3)."""
    sink = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sink.bind(("::1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    address, payload = sink.getsockname()[:2], b"x" * 600
    rounds = []
    for _ in range(3):
        began = time.process_time()
        for _ in range(count):
            sender.sendto(payload, address)
        rounds.append(time.process_time() - began)
        sink.setblocking(False)
        try:
            while sink.recv(1 << 16):
                pass
        except BlockingIOError:
            pass
    sender.close()
    sink.close()
    return statistics.median(rounds)


def scrape_cost(flows: list[Flow], limit: int = 1000) -> float:
    """CPU seconds of one Prometheus scrape of the per-flow gauges (maxFlowMetrics at its default),
    median of 3."""
    table = FlowTable()
    for flow in flows:
        table.apply(FlowEvent.of("start", flow.protocol, str(flow.src), str(flow.dst), flow.sport, flow.dport,
                                 2, 15), "bench")
    collector = FlowMetrics(lambda: table, limit)
    rounds = []
    for _ in range(3):
        began = time.process_time()
        families = collector.families()
        rounds.append(time.process_time() - began)
    assert len(families[0].samples) == min(limit, len(flows)), len(families[0].samples)
    return statistics.median(rounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="OUT", type=Path, help="also write the figures as JSON to OUT")
    parser.add_argument("--flows", type=int, default=10_000)
    parser.add_argument("--sweeps", type=int, default=21)
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    with Pair() as pair, held_connections(pair, args.flows, PORT) as clients:
        flows = [Flow.of("tcp", A, B, c.getsockname()[1], PORT) for c in clients]
        seconds: list[float] = []
        iterator_seconds: list[float] = []
        matched = 0
        with pair.a.entered(), tempfile.TemporaryDirectory() as workdir, \
                TcpStatsIterator(Path(workdir)) as iterator:
            if iterator.sweep() != tcpinfo.sweep():
                raise SystemExit("the BPF iterator and sock_diag read different numbers")
            for _ in range(args.sweeps):  # interleaved, so both see the same machine
                for sweep, times in ((iterator.sweep, iterator_seconds), (tcpinfo.sweep, seconds)):
                    began = time.process_time()
                    sockets = sweep()
                    matched = sum(tcpinfo.of_flow(sockets, flow) is not None for flow in flows)
                    times.append(time.process_time() - began)
        with pair.a.entered():
            fireflies = enriched_rounds(flows)
            scrape = scrape_cost(flows)
    floor = sending_floor(args.flows)
    median = statistics.median(seconds)
    iterator_median = statistics.median(iterator_seconds)
    percent = median * 100.0  # of one core, refreshing once a second
    ok = percent <= TARGET_PERCENT and matched == args.flows
    print(f"{'figure':<46} {'value':>10} {'target':>10}  result")
    print(f"{'TCP statistics of 10,000 flows each second (% core)':<46} {percent:>10.2f} "
          f"{'<= ' + format(TARGET_PERCENT, '.0f'):>10}  {'PASS' if ok else 'MISS'}")
    for mode, cost in fireflies.items():
        print(f"  enriched ongoing fireflies, {mode or 'full'}: {cost * 1000:.0f} ms CPU for {args.flows:,} "
              f"({cost * 100:.1f} % of a core at a 1 s period)")
    print(f"  sending {args.flows:,} prepared datagrams, nothing encoded: {floor * 1000:.0f} ms CPU "
          f"({floor * 100:.1f} % of a core at a 1 s period)")
    print(f"  a scrape of the per-flow gauges (1,000 of {args.flows:,} flows exported): "
          f"{scrape * 1000:.0f} ms CPU")
    print(f"  the same by the BPF iterator: median {iterator_median * 1000:.1f} ms CPU "
          f"(sock_diag's time / the iterator's: {median / iterator_median:.2f})")
    print(f"  one sweep and match: median {median * 1000:.1f} ms CPU, min {min(seconds) * 1000:.1f} ms, "
          f"max {max(seconds) * 1000:.1f} ms over {args.sweeps}; {matched:,} of {args.flows:,} flows matched")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"flows": args.flows, "sweep_cpu_seconds": seconds,
                                         "ongoing_firefly_round_cpu_seconds": fireflies,
                                         "bpf_iterator_sweep_cpu_seconds": iterator_seconds,
                                         "flow_metrics_scrape_cpu_seconds": scrape,
                                         "datagram_sending_floor_cpu_seconds": floor,
                                         "percent_of_core_at_1s": percent, "matched": matched,
                                         "target_percent": TARGET_PERCENT, "pass": ok}, indent=2) + "\n")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
