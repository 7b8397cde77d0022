"""The files sites have: a flowd-go 2.x YAML and a flowd.cfg run the daemon, seen on the wire.

The seed JSON of flowd-go 1.x is the format of every other end-to-end test.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from e2e_support import Daemon, decoded
from test_daemon import firefly, line

from flowlabel import times
from flowlabel.events import FlowEvent, format_firefly, parse_firefly
from support.netns import A, B, Pair

pytestmark = pytest.mark.netns


class Receiver:
    """A UDP socket in a namespace that keeps what arrives (IPv4 and IPv6 alike)."""

    def __init__(self, ns: object, address: str, port: int) -> None:
        with ns.entered():  # type: ignore[attr-defined]
            self.sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.bind((address, port))
        self.sock.settimeout(0.3)

    def datagrams(self, wanted: int, timeout: float = 5.0) -> list[bytes]:
        """What arrived until ``wanted`` datagrams did or ``timeout`` passed, then a little longer."""
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got.append(self.sock.recv(65536))
            except socket.timeout:
                if len(got) >= wanted:
                    break
        return got

    def close(self) -> None:
        self.sock.close()


def test_a_flowd_go_2_yaml_file_marks_reports_and_relays(pair: Pair, tmp_path: Path,
                                                        daemons: list[Daemon]) -> None:
    destination = Receiver(pair.b, B, 10514)
    collectors = [Receiver(pair.a, "::", 10601), Receiver(pair.a, "::", 10602)]
    relay_receiver = Receiver(pair.a, "::", 10600)
    text = f"""\
# flowd-go 2.x's layout; collectors by host name and address
pidPath: "{tmp_path}/flowd-go.pid"
workDir: "{tmp_path}/work"
plugins:
    namedPipe:
        pipePath: "{tmp_path}/flowd-go/np"
    api: {{}}
    firefly:
        bindAddress: "127.0.0.1"
        bindPort: 10514
        fireflyReceivers:
            - address: "127.0.0.1"
              port: 10600
backends:
    marker:
        targetInterfaces: ["{pair.if_a}"]
    firefly:
        sendToCollector: true
        collectorAddress: "localhost"
        collectorPort: 10601
        collectors: ["127.0.0.1:10602"]
"""
    document = {"pidPath": f"{tmp_path}/flowd-go.pid", "workDir": f"{tmp_path}/work",
                "plugins": {"namedPipe": {"pipePath": f"{tmp_path}/flowd-go/np"}}}
    daemon = Daemon(pair.a, tmp_path, document, text=text, filename="conf.yaml")
    daemons.append(daemon.start())
    try:
        flow = (26000, 9600)
        daemon.write_pipe(line("start", *flow, 5, 6))
        daemon.wait_for_flows(1)
        assert {(x.experiment, x.activity) for x in decoded(pair.labels([flow])[flow])} == {(5, 6)}
        # The start firefly: to the flow's destination and to both collectors, with flowd-go 2.x's
        # default syslog header.
        for receiver in (destination, *collectors):
            (datagram,) = receiver.datagrams(1)
            event = parse_firefly(datagram)
            assert (event.state, event.sport, event.dport, event.experiment) == ("start", *flow, 5)
            # RFC 5424: PRI VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD
            pri, timestamp, hostname, app, procid, msgid, sd = datagram.decode().split(" ")[:7]
            assert (pri, app, procid, msgid, sd) == ("<134>1", "flowlabel", "-", "firefly-json", "-")
            assert abs((times.parse(timestamp) - times.now()).total_seconds()) < 30
            assert hostname == socket.gethostname()

        # A sender that names the flow from the other end (XRootD 5.8's uploads: the client,
        # here the remote b, as src-ip) marks the same packets.
        upload = (26002, 9602)
        reverse = FlowEvent.of("start", "udp", B, A, upload[1], upload[0], 9, 10,
                               start_time="2024-03-28T08:58:48Z")
        daemon.send_firefly(format_firefly(reverse, syslog=True))
        daemon.wait_for_flows(2)
        assert {(x.experiment, x.activity) for x in decoded(pair.labels([upload])[upload])} == {(9, 10)}
        assert [parse_firefly(d).sport for d in relay_receiver.datagrams(1)] == [upload[1]]

        # A received firefly is applied and relayed once; the copy a peer relays back is not.
        relayed = (26001, 9601)
        sent = firefly("start", *relayed, 7, 8, syslog=True)
        daemon.send_firefly(sent)
        (forwarded,) = relay_receiver.datagrams(1)
        assert forwarded == sent
        daemon.send_firefly(forwarded)
        assert relay_receiver.datagrams(0, timeout=0.6) == []
        assert daemon.metrics()["flowlabel_firefly_relay_repeats_total"] == 1
        assert daemon.metrics()["flowlabel_fireflies_relayed_total"] == 2  # the reversed one too
        assert {(x.experiment, x.activity) for x in decoded(pair.labels([relayed])[relayed])} == {(7, 8)}
        # Fireflies that came in are not written out again by the firefly backend.
        assert destination.datagrams(0, timeout=0.3) == []
    finally:
        for receiver in (destination, *collectors, relay_receiver):
            receiver.close()
    assert daemon.stop() == 0


def test_a_flowd_cfg_with_np_api_and_udp_firefly_runs(pair: Pair, tmp_path: Path,
                                                      daemons: list[Daemon]) -> None:
    destination = Receiver(pair.b, B, 10514)
    collector = Receiver(pair.a, "::", 10514)
    text = f"""\
PLUGIN='np_api'
BACKEND='udp_firefly'
UDP_FIREFLY_DST='127.0.0.1'
NP_API_FILE='{tmp_path}/flowd'
PID_FILE='{tmp_path}/flowd.pid'
WORK_DIR='{tmp_path}/work'
"""
    document = {"pidPath": f"{tmp_path}/flowd.pid", "workDir": f"{tmp_path}/work",
                "plugins": {"namedPipe": {"pipePath": f"{tmp_path}/flowd"}}}
    daemon = Daemon(pair.a, tmp_path, document, text=text, filename="flowd.cfg")
    daemons.append(daemon.start())
    try:
        flow = (26100, 9700)
        daemon.write_pipe(line("start", *flow, 3, 4) + line("end", *flow, 3, 4))
        for receiver in (destination, collector):
            start, end = receiver.datagrams(2)
            assert start.startswith(b"<134>1 ") and b" flowlabel - firefly-json - " in start
            assert [parse_firefly(d).state for d in (start, end)] == ["start", "end"]
            assert parse_firefly(end).experiment == 3
    finally:
        destination.close()
        collector.close()
    assert "not marking (no ebpf backend)" in daemon.log()
    assert daemon.stop() == 0
