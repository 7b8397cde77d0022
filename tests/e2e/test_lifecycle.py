"""Flows that end by themselves: with their TCP socket, after idleTimeout, after a reboot.

The daemon marks on a's veth; the flows' sockets are real sockets in the namespaces.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Daemon

from flowlabel.events import parse_firefly
from support import wait_until
from support.netns import A, B, Pair

pytestmark = pytest.mark.netns


def configured(pair: Pair, tmp_path: Path, **ebpf: Any) -> Daemon:
    daemon = Daemon.standard(pair, tmp_path)
    daemon.document["backends"]["ebpf"].update(ebpf)
    daemon.config_path.write_text(json.dumps(daemon.document))
    return daemon


def ended(daemon: Daemon, reason: str) -> int:
    return int(daemon.metrics().get(f'flowlabel_flows_ended_total{{reason="{reason}"}}', 0))


class Connection:
    """A TCP connection from a (A) to b (B), with the label its packets carry as b sees them."""

    def __init__(self, pair: Pair) -> None:
        with pair.b.entered():
            self.server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.server.bind((B, 0))
        self.server.listen(1)
        with pair.a.entered():
            self.client = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.client.connect((B, self.server.getsockname()[1]))
        self.accepted, _ = self.server.accept()
        self.sport, self.dport = self.client.getsockname()[1], self.server.getsockname()[1]

    def line(self, state: str, experiment: int = 7, activity: int = 8) -> str:
        return f"{state} tcp {A} {self.sport} {B} {self.dport} {experiment} {activity}\n"

    def close(self) -> None:
        for s in (self.client, self.accepted, self.server):
            s.close()


@pytest.mark.parametrize("tracking", ["events", "polling"])
def test_a_tcp_flow_ends_with_its_socket(pair: Pair, tmp_path: Path, daemons: list[Daemon],
                                         tracking: str) -> None:
    daemon = configured(pair, tmp_path, socketTracking=tracking)
    daemons.append(daemon.start())
    assert f"TCP sockets: {tracking}" in daemon.log()
    conn = Connection(pair)
    try:
        daemon.write_pipe(conn.line("start"))
        daemon.wait_for_flows(1)
        # A transfer of a little over a second: a poll sees its socket open (one that closes before
        # the first poll saw it waits out the grace of a flow whose socket has not appeared yet).
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            conn.client.sendall(b"x" * 1000)
            assert conn.accepted.recv(1000)
            time.sleep(0.1)
    finally:
        conn.close()
    # No end event: the socket closing is enough. (Within the 5 s waited here, nothing else ends
    # the flow: a socket never seen waits 60 s, an idle flow 300 s; the reason says which.)
    assert wait_until(lambda: daemon.flows() == [], timeout=5)
    assert ended(daemon, "socket_closed") == 1
    assert daemon.stop() == 0


def test_an_idle_udp_flow_expires_and_a_busy_one_stays(pair: Pair, tmp_path: Path,
                                                        daemons: list[Daemon]) -> None:
    daemon = configured(pair, tmp_path, idleTimeout=2)
    daemons.append(daemon.start())
    idle, busy = (31000, 9000), (31001, 9001)
    daemon.write_pipe(f"start udp {A} {idle[0]} {B} {idle[1]} 1 2\n"
                      f"start udp {A} {busy[0]} {B} {busy[1]} 3 4\n")
    daemon.wait_for_flows(2)
    began = time.monotonic()
    while time.monotonic() - began < 6:
        pair.send_udp([busy], count=1)
        time.sleep(0.2)
    ports = {(f["src_port"], f["dst_port"]) for f in daemon.flows()}
    assert ports == {busy}
    assert ended(daemon, "idle") == 1
    assert daemon.stop() == 0


def test_a_flow_that_ended_by_itself_is_logged_and_sent_on_as_an_end_firefly(
    pair: Pair, tmp_path: Path, daemons: list[Daemon]
) -> None:
    with pair.b.entered():
        collector = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    collector.bind((B, 10514))
    collector.settimeout(10)
    daemon = Daemon.standard(pair, tmp_path, logLevel="debug",
                             backends={"ebpf": {"targetInterface": pair.if_a, "idleTimeout": 2},
                                       "firefly": {}})
    daemons.append(daemon.start())
    try:
        daemon.write_pipe(f"start udp {A} 31500 {B} 9500 5 6\n")
        started = parse_firefly(collector.recv(65536))
        ended_event = parse_firefly(collector.recv(65536))  # no end line: the idle timeout ends it
    finally:
        collector.close()
    assert (started.state, ended_event.state) == ("start", "end")
    assert (ended_event.sport, ended_event.dport, ended_event.experiment, ended_event.activity) == \
        (31500, 9500, 5, 6)
    assert ended_event.start_time == started.start_time and ended_event.end_time is not None
    assert f"udp [{A}]:31500 -> [{B}]:9500 ended by itself: idle" in daemon.log()
    assert ended(daemon, "idle") == 1
    assert daemon.metrics()['flowlabel_events_total{source="lifecycle",outcome="ended"}'] == 1
    assert daemon.stop() == 0


def test_flows_of_a_previous_boot_are_not_marked_again(pair: Pair, tmp_path: Path,
                                                       daemons: list[Daemon]) -> None:
    daemon = configured(pair, tmp_path)
    daemons.append(daemon.start())
    daemon.write_pipe(f"start udp {A} 32000 {B} 9000 1 2\n")
    daemon.wait_for_flows(1)
    assert daemon.stop() == 0
    # As if the host had rebooted since.
    (Path(daemon.document["workDir"]) / "boot_id").write_text("00000000-0000-0000-0000-000000000000\n")
    restarted = Daemon(pair.a, tmp_path, daemon.document)
    daemons.append(restarted.start())
    assert "0 flows restored" in restarted.log()
    assert "1 flows of the last run belong to a previous boot" in restarted.log()
    assert restarted.flows() == []
    assert ended(restarted, "previous_boot") == 1
    assert pair.labels([(32000, 9000)])[(32000, 9000)] == {0}
    assert restarted.stop() == 0


def test_tcp_flows_whose_socket_closed_while_down_are_gone_after_restart(
    pair: Pair, tmp_path: Path, daemons: list[Daemon]
) -> None:
    count = 10_000
    daemon = configured(pair, tmp_path)
    daemons.append(daemon.start())
    # Flows with a local end whose connections closed while the daemon was down (none exists now),
    # and one whose connection stays open.
    gone = "".join(f"start tcp {A} {20000 + i} {B} 443 1 2\n" for i in range(count))
    conn = Connection(pair)
    try:
        daemon.write_pipe(gone + conn.line("start"))
        assert wait_until(lambda: daemon.api("GET", "/health")["active_flows"] == count + 1, timeout=20)
        assert daemon.stop() == 0
        restarted = Daemon(pair.a, tmp_path, daemon.document)
        daemons.append(restarted.start())
        assert f"{count + 1} flows restored" in restarted.log()
        assert wait_until(lambda: restarted.api("GET", "/health")["active_flows"] == 1, timeout=20)
        (left,) = restarted.flows()
        assert (left["src_port"], left["dst_port"]) == (conn.sport, conn.dport)
        assert ended(restarted, "no_socket") == count
        assert restarted.stop() == 0
    finally:
        conn.close()
