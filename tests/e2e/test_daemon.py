"""``flowlabel run`` end to end: events in through every source, labels out on the wire."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import pytest
from e2e_support import Daemon, attachments, decoded

from flowlabel.events import FlowEvent, format_firefly, parse_firefly
from flowlabel.label import decode
from flowlabel.marker import bundled_object, tcx_program_names
from support.kernel import attach_modes
from support.netns import A, B, Namespace, Pair
from support.privilege import as_the_unit, capability_mask, unit_capabilities

pytestmark = pytest.mark.netns


def line(state: str, sport: int, dport: int, experiment: int = 0, activity: int = 0,
         protocol: str = "udp") -> str:
    return f"{state} {protocol} {A} {sport} {B} {dport} {experiment} {activity}\n"


def firefly(state: str, sport: int, dport: int, experiment: int, activity: int, *, syslog: bool) -> bytes:
    event = FlowEvent.of(state, "udp", A, B, sport, dport, experiment, activity,
                         start_time="2024-03-28T08:58:48Z",
                         end_time="2024-03-28T09:00:00Z" if state == "end" else None)
    return format_firefly(event, syslog=syslog)


def test_pipe_events_mark_packets_and_end_unmarks_them(pair: Pair, tmp_path: Path,
                                                       daemons: list[Daemon]) -> None:
    daemon = Daemon.standard(pair, tmp_path)
    daemons.append(daemon.start())
    flows = [(20000 + i, 5000 + i) for i in range(12)]
    wanted = {flow: (1 + i * 37 % 500, i * 5 % 64) for i, flow in enumerate(flows)}
    # Whitespace as loose as flowd allows, and one line split over two writes.
    text = "".join(line("start", s, d, *wanted[(s, d)]).replace(" ", "   ", 2) for s, d in flows)
    daemon.write_pipe(text[:50])
    daemon.write_pipe(text[50:])
    assert len(daemon.wait_for_flows(len(flows))) == len(flows)

    seen = pair.labels(flows)
    for flow in flows:
        (label,) = decoded(seen[flow])
        assert (label.experiment, label.activity) == wanted[flow], flow
    entropies = {next(iter(decoded(seen[flow]))).entropy for flow in flows}
    assert len(entropies) > 1, "entropy bits must vary across flows"

    ended, kept = flows[0], flows[1]
    daemon.write_pipe(line("end", *ended, *wanted[ended]))
    daemon.wait_for_flows(len(flows) - 1)
    after = pair.labels([ended, kept])
    assert after[ended] == {0}
    assert after[kept] == seen[kept]


def test_fireflies_bare_and_syslog_mark_packets(pair: Pair, tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = Daemon.standard(pair, tmp_path)
    daemons.append(daemon.start())
    bare, syslog = (21000, 6000), (21001, 6001)
    daemon.send_firefly(firefly("start", *bare, 7, 9, syslog=False))
    daemon.send_firefly(firefly("start", *syslog, 300, 63, syslog=True))
    assert len(daemon.wait_for_flows(2)) == 2
    seen = pair.labels([bare, syslog])
    assert {(x.experiment, x.activity) for x in decoded(seen[bare])} == {(7, 9)}
    assert {(x.experiment, x.activity) for x in decoded(seen[syslog])} == {(300, 63)}

    daemon.send_firefly(firefly("end", *syslog, 300, 63, syslog=True))
    daemon.wait_for_flows(1)
    assert pair.labels([syslog])[syslog] == {0}


def test_api_and_the_cli_talk_to_a_running_daemon(pair: Pair, tmp_path: Path,
                                                  daemons: list[Daemon]) -> None:
    daemon = Daemon.standard(pair, tmp_path)
    daemons.append(daemon.start())
    api_flow, cli_flow = (22000, 7000), (22001, 7001)
    answer = daemon.api("POST", "/flows", {"protocol": "udp", "src_ip": A, "src_port": api_flow[0],
                                           "dst_ip": B, "dst_port": api_flow[1],
                                           "experiment": "atlas", "activity": 2})
    assert answer["outcome"] == "started"
    started = daemon.command("start", "udp", A, str(cli_flow[0]), B, str(cli_flow[1]), "11", "22")
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("started: udp ") and "experiment 11, activity 22" in started.stdout

    listed = daemon.command("flows")
    assert listed.returncode == 0, listed.stderr
    assert f"[{A}]:{cli_flow[0]}" in listed.stdout and f"[{A}]:{api_flow[0]}" in listed.stdout
    as_json = json.loads(daemon.command("flows", "--json").stdout)["flows"]
    labels = {(f["src_port"], f["dst_port"]): f["label"] for f in as_json}

    seen = pair.labels([api_flow, cli_flow])
    assert seen[api_flow] == {labels[api_flow]}
    assert seen[cli_flow] == {labels[cli_flow]}
    assert (decode(labels[api_flow]).experiment, decode(labels[cli_flow]).activity) == (2, 22)

    ended = daemon.command("end", "udp", A, str(cli_flow[0]), B, str(cli_flow[1]))
    assert ended.returncode == 0 and ended.stdout.startswith("ended: "), ended
    again = daemon.command("end", "udp", A, str(cli_flow[0]), B, str(cli_flow[1]))
    assert again.returncode == 0 and again.stdout.startswith("unknown_end: ")
    bad = daemon.command("start", "udp", "nowhere", "1", B, "2", "3", "4")
    assert bad.returncode == 2 and "src_ip" in bad.stderr
    assert pair.labels([cli_flow])[cli_flow] == {0}


def test_garbage_is_counted_and_valid_events_around_it_applied(pair: Pair, tmp_path: Path,
                                                               daemons: list[Daemon]) -> None:
    daemon = Daemon.standard(pair, tmp_path)
    daemons.append(daemon.start())
    pipe_garbage = [
        "hello\n",
        "start tcp 2001:db8::1 2345 2001:db8::2\n",
        f"start sctp {A} 1 {B} 2 3 4\n",
        f"start udp {A} 70000 {B} 2 3 4\n",
        f"start udp {A} 1 {B} 2 999 4\n",
        f"start udp {A} 1 {B} 2 unknown-experiment 4\n",
        "x" * 5000 + "\n",
    ]
    valid_pipe = [(23000 + i, 8000 + i) for i in range(len(pipe_garbage))]
    text = "".join(g + line("start", *flow, 5, 6) for g, flow in zip(pipe_garbage, valid_pipe))
    daemon.write_pipe(text)
    daemon.write_pipe(b"start udp \xff\xfe 1 2 3 4 5 6\n")  # not UTF-8
    pipe_garbage.append("(the line that is not UTF-8)")

    firefly_garbage = [
        b"",
        b"not json",
        b"<134>1 broken syslog",
        b'{"version": 2}',
        b"[1, 2, 3]",
        firefly("start", 1, 2, 3, 4, syslog=False).replace(b'"udp"', b'"icmp"'),
        b"{" * 10000,
    ]
    valid_ff = [(24000 + i, 9000 + i) for i in range(len(firefly_garbage))]
    for g, flow in zip(firefly_garbage, valid_ff):
        daemon.send_firefly(g)
        daemon.send_firefly(firefly("start", *flow, 8, 9, syslog=True))

    flows = daemon.wait_for_flows(len(valid_pipe) + len(valid_ff))
    assert {(f["src_port"], f["dst_port"]) for f in flows} == set(valid_pipe) | set(valid_ff)
    metrics = daemon.metrics()
    assert metrics['flowlabel_events_total{source="pipe",outcome="rejected"}'] == len(pipe_garbage)
    assert metrics['flowlabel_events_total{source="firefly",outcome="rejected"}'] == len(firefly_garbage)
    assert metrics['flowlabel_events_total{source="pipe",outcome="started"}'] == len(valid_pipe)
    assert daemon.alive()
    assert daemon.log().count("rejected pipe input") == len(pipe_garbage)
    assert "not valid UTF-8" in daemon.log()
    seen = pair.labels([valid_pipe[-1], valid_ff[-1]])
    assert {(x.experiment, x.activity) for x in decoded(seen[valid_pipe[-1]])} == {(5, 6)}
    assert {(x.experiment, x.activity) for x in decoded(seen[valid_ff[-1]])} == {(8, 9)}


def test_flowd_configuration_works_unchanged(pair: Pair, tmp_path: Path, daemons: list[Daemon]) -> None:
    document = {
        "pidPath": str(tmp_path / "flowd.pid"),
        "workDir": str(tmp_path / "work"),
        "plugins": {"namedPipe": {"pipePath": str(tmp_path / "np"), "maxReaders": 5, "buffSize": 1000}},
        "backends": {"ebpf": {"targetInterface": pair.if_a, "removeQdisc": True,
                              "programPath": str(bundled_object())}},
    }
    daemon = Daemon(pair.a, tmp_path, document)
    daemons.append(daemon.start())
    udp, tcp = (25000, 9500), (25001, 9501)
    # No API in flowd's configuration: the UDP flow's label says when the pipe was read,
    # and the TCP line before it was applied first.
    daemon.write_pipe(line("start", *tcp, 45, 56, protocol="tcp") + line("start", *udp, 44, 55))
    udp_labels: set[int] = set()
    for _ in range(50):
        udp_labels = pair.labels([udp], count=1)[udp]
        if udp_labels != {0}:
            break
    assert {(x.experiment, x.activity) for x in decoded(udp_labels)} == {(44, 55)}
    # Every packet of the connection, its handshake included, leaves marked.
    assert {(x.experiment, x.activity) for x in decoded(pair.tcp_labels(*tcp))} == {(45, 56)}
    assert daemon.stop() == 0


def test_a_bad_key_is_refused_with_its_path(pair: Pair, tmp_path: Path) -> None:
    document = {"backends": {"ebpf": {"targetInterface": pair.if_a, "removeQdisc": "yes"}}}
    daemon = Daemon(pair.a, tmp_path, document)
    result = daemon.command("run", timeout=10)
    assert result.returncode == 2
    assert 'backends.ebpf.removeQdisc: expected a boolean, got "yes"' in result.stderr
    assert tcx_program_names_in(pair.a, pair.if_a) == []


def tcx_program_names_in(ns: Namespace, ifname: str) -> list[str]:
    index = int(ns.run("cat", f"/sys/class/net/{ifname}/ifindex").stdout)
    with ns.entered():
        return tcx_program_names(index)


def interface_state(ns: Namespace, ifname: str) -> tuple[str, str, list[str]]:
    qdiscs = ns.run("tc", "qdisc", "show", "dev", ifname).stdout
    filters = ns.run("tc", "filter", "show", "dev", ifname, "egress", check=False).stdout
    return qdiscs, filters, tcx_program_names_in(ns, ifname)


@attach_modes
def test_sigterm_leaves_the_interface_as_found_and_a_restart_restores_flows(
    pair: Pair, tmp_path: Path, daemons: list[Daemon], mode: str
) -> None:
    before = interface_state(pair.a, pair.if_a)
    daemon = Daemon.standard(pair, tmp_path)
    daemon.document["backends"]["ebpf"]["attachMode"] = mode
    daemon.config_path.write_text(json.dumps(daemon.document))
    daemons.append(daemon.start())
    assert interface_state(pair.a, pair.if_a) != before
    flows = [(26000 + i, 9600 + i) for i in range(4)]
    daemon.write_pipe("".join(line("start", *flow, 100 + i, i) for i, flow in enumerate(flows)))
    daemon.wait_for_flows(len(flows))
    daemon.write_pipe(line("end", *flows[-1]))
    daemon.wait_for_flows(len(flows) - 1)
    first = pair.labels(flows)

    assert daemon.stop(signal.SIGTERM) == 0
    assert interface_state(pair.a, pair.if_a) == before
    assert not daemon.pipe_path.exists() and not daemon.pid_path.exists()
    assert len(json.loads(daemon.state_path.read_text())["flows"]) == len(flows) - 1
    assert pair.labels(flows[:1])[flows[0]] == {0}
    assert "final summary: " in daemon.log()

    restarted = Daemon(pair.a, tmp_path, daemon.document)
    daemons.append(restarted.start())
    assert f"{len(flows) - 1} flows restored" in restarted.log()
    again = pair.labels(flows)
    for flow in flows[:-1]:
        assert again[flow] == first[flow] and again[flow] != {0}, flow
    assert again[flows[-1]] == {0}
    assert restarted.stop(signal.SIGINT) == 0
    assert interface_state(pair.a, pair.if_a) == before

    # SIGHUP, as when the terminal of a daemon run in the foreground closes: the same clean stop.
    third = Daemon(pair.a, tmp_path, daemon.document)
    daemons.append(third.start())
    assert third.stop(signal.SIGHUP) == 0
    assert interface_state(pair.a, pair.if_a) == before
    assert not third.pipe_path.exists() and not third.pid_path.exists()
    assert third.log().count("final summary: ") == 3
    assert len(json.loads(third.state_path.read_text())["flows"]) == len(flows) - 1


def test_a_second_daemon_is_refused(pair: Pair, tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = Daemon.standard(pair, tmp_path)
    daemons.append(daemon.start())
    result = daemon.command("run", timeout=10)
    assert result.returncode == 1
    assert "already running" in result.stderr
    assert daemon.alive() and daemon.pid_path.exists() and daemon.pipe_path.exists()


@attach_modes
def test_the_units_privileges_are_enough_to_run_and_to_restart_after_sigkill(
    pair: Pair, tmp_path: Path, daemons: list[Daemon], mode: str
) -> None:
    # As packaging/flowlabel.service runs it: root with only the unit's capabilities and memlock limit.
    daemon = Daemon.standard(pair, tmp_path)
    daemon.document["backends"]["ebpf"]["attachMode"] = mode
    daemon.config_path.write_text(json.dumps(daemon.document))
    daemons.append(daemon.start(prefix=as_the_unit()))
    assert daemon.process is not None
    status = Path(f"/proc/{daemon.process.pid}/status").read_text()
    (effective,) = [int(row.split()[1], 16) for row in status.splitlines() if row.startswith("CapEff:")]
    assert effective == capability_mask(unit_capabilities())
    # The socket watcher too runs with only these (attaching to a cgroup needs CAP_NET_ADMIN).
    assert "TCP sockets: events" in daemon.log()
    first, second = (27000, 9700), (27001, 9701)
    daemon.write_pipe(line("start", *first, 12, 34))
    daemon.wait_for_flows(1)
    assert {(x.experiment, x.activity) for x in decoded(pair.labels([first])[first])} == {(12, 34)}
    attached = attachments(pair.a, pair.if_a)

    # Killed: a tc filter stays behind, and the next daemon must take it over with the same privileges.
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(10)
    restarted = Daemon(pair.a, tmp_path, daemon.document)
    daemons.append(restarted.start(prefix=as_the_unit()))
    assert "1 flows restored" in restarted.log()
    restarted.write_pipe(line("start", *second, 56, 7))
    restarted.wait_for_flows(2)
    seen = pair.labels([first, second])
    assert {(x.experiment, x.activity) for x in decoded(seen[first])} == {(12, 34)}
    assert {(x.experiment, x.activity) for x in decoded(seen[second])} == {(56, 7)}
    assert attachments(pair.a, pair.if_a) == attached  # one filter or link, not two
    assert restarted.stop() == 0


def test_discovered_interfaces_are_marked(pair: Pair, tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = Daemon.standard(pair, tmp_path)
    daemon.document["backends"]["ebpf"] = {"discoverInterfaces": True}
    daemon.config_path.write_text(json.dumps(daemon.document))
    daemons.append(daemon.start())
    # fd00::1/64 is a global-scope address: a's end of the veth pair qualifies, lo does not.
    assert f"marking on {pair.if_a} (" in daemon.log()
    flow = (27100, 9710)
    daemon.write_pipe(line("start", *flow, 1, 1))
    daemon.wait_for_flows(1)
    assert {(x.experiment, x.activity) for x in decoded(pair.labels([flow])[flow])} == {(1, 1)}


def test_firefly_backend_reports_starts_and_ends(pair: Pair, tmp_path: Path, daemons: list[Daemon]) -> None:
    with pair.b.entered():
        collector = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    collector.bind((B, 10514))
    collector.settimeout(5)
    daemon = Daemon.standard(pair, tmp_path, backends={"ebpf": {"targetInterface": pair.if_a},
                                                       "firefly": {"prependSyslog": True}})
    daemons.append(daemon.start())
    try:
        daemon.write_pipe(line("start", 27200, 9720, 3, 4))
        started = collector.recv(65536)
        daemon.write_pipe(line("end", 27200, 9720))
        ended = collector.recv(65536)
    finally:
        collector.close()
    assert started.startswith(b"<134>1 ")
    start_event, end_event = parse_firefly(started), parse_firefly(ended)
    assert (start_event.state, start_event.sport, start_event.dport) == ("start", 27200, 9720)
    # The end line named no experiment: the firefly carries the one the flow started with.
    assert (end_event.state, end_event.experiment, end_event.activity) == ("end", 3, 4)
    assert end_event.start_time == start_event.start_time and end_event.end_time is not None


def test_a_damaged_state_file_is_set_aside(pair: Pair, tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = Daemon.standard(pair, tmp_path)
    daemon.state_path.parent.mkdir(parents=True)
    daemon.state_path.write_text("{not json")
    daemons.append(daemon.start())
    assert "0 flows restored" in daemon.log() and "is not valid JSON" in daemon.log()
    assert daemon.state_path.with_name("flows.json.broken").read_text() == "{not json"


def test_an_interface_that_comes_back_is_marked_again(pair: Pair, tmp_path: Path,
                                                      daemons: list[Daemon]) -> None:
    daemon = Daemon.standard(pair, tmp_path)
    daemons.append(daemon.start())
    flow = (27300, 9730)
    daemon.write_pipe(line("start", *flow, 77, 7))
    daemon.wait_for_flows(1)
    before = pair.labels([flow])[flow]
    pair.recreate_link()
    deadline = time.monotonic() + 10
    while f"interface {pair.if_a} is back" not in daemon.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    # A new device under the old name: the daemon noticed (within its 2 s check) and attached again.
    assert f"interface {pair.if_a} is back" in daemon.log()
    assert pair.labels([flow])[flow] == before != {0}
    assert daemon.stop() == 0
