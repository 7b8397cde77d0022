"""The ongoing round (csrc/ongoing.c through flowlabel.ongoing and the firefly backend) on real
TCP connections: each flow gets the firefly of its own socket, announced either way round, with
the members of the very tcp_info the round read; a flow that ends or is relabelled during a round
in steps gets no firefly after it; what cannot be sent is counted and logged, and the rest goes."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from flowlabel import config, enrichment, tcpinfo
from flowlabel.backends.firefly import FireflyBackend
from flowlabel.events import FlowEvent, OngoingFirefly, syslog_header
from flowlabel.flow import flow_key
from flowlabel.flowtable import FlowTable
from flowlabel.label import encode
from flowlabel.ongoing import OngoingRound
from support.connections import held_connections
from support.netns import A, B, Pair

pytestmark = pytest.mark.netns

PORT = 7100
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; Python's socket module does not name it
#: tcp_info members that count time since something happened, which grow between two reads.
_CLOCKS = {"last_data_sent", "last_ack_sent", "last_data_recv", "last_ack_recv", "busy_time"}


@pytest.fixture
def sink(pair: Pair) -> Iterator[socket.socket]:
    """A collector on ::1 in namespace a, where the rounds run, with room for every firefly of a
    round (FORCE: beyond the host's rmem_max, as root)."""
    with pair.a.entered():
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 24)
    s.bind(("::1", 0))
    s.setblocking(False)
    with s:
        yield s


def received(sink: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sink.recv(65536))
        except BlockingIOError:
            return out


def states_of(messages: list[dict[str, Any]], sport: int) -> list[str]:
    """The lifecycle states of the fireflies of the connection from ``sport``."""
    return [m["flow-lifecycle"]["state"] for m in messages if m["flow-id"]["src-port"] == sport]


def start(sport: int, *, reverse: bool = False, activity: int = 15) -> FlowEvent:
    """The start of the flow of the connection from A:``sport``, announced from either end."""
    if reverse:
        return FlowEvent.of("start", "tcp", B, A, PORT, sport, 2, activity)
    return FlowEvent.of("start", "tcp", A, B, sport, PORT, 2, activity)


def backend(pair: Pair, sink: socket.socket, mode: str = "lean", **keys: Any) -> FireflyBackend:
    settings = {"sendToDestination": False, "sendToCollector": True, "collectorAddress": "::1",
                "collectorPort": sink.getsockname()[1], "enrich": True, "enrichmentMode": mode, **keys}
    made = FireflyBackend(config.parse({"backends": {"firefly": settings}}).backends.firefly)
    with pair.a.entered():
        made.start()
    return made


@pytest.mark.parametrize("mode", ["lean", "compatible", ""])
def test_each_flow_gets_the_members_of_its_own_sockets_tcp_info(mode: str, pair: Pair,
                                                                sink: socket.socket) -> None:
    with held_connections(pair, 40, PORT) as clients:
        sent = {c.getsockname()[1]: 1000 * n for n, c in enumerate(clients)}  # different numbers in each
        for client in clients:
            client.sendall(b"x" * sent[client.getsockname()[1]])
        time.sleep(0.2)  # acknowledged
        events = [start(c.getsockname()[1], reverse=n % 2 == 1) for n, c in enumerate(clients)]
        with pair.a.entered():
            round_ = OngoingRound(mode, [(socket.AF_INET6, ("::1", sink.getsockname()[1]))])
            # Registered but for a connection that does not exist: no socket, no firefly.
            missing = FlowEvent.of("start", "tcp", A, B, 1, PORT, 2, 15)
            for event in (*events, missing):
                round_.put(flow_key(event.flow), OngoingFirefly(event).template(*round_.marks), None)
            assert round_.dump() == len(clients)
        current = "2026-12-02T10:00:00.000000Z"
        header = syslog_header(current)
        left, done = round_.send(header, current, 1000)
        assert (left, done.written, done.sent, done.errors) == (0, len(clients), len(clients), 0)
        got = received(sink)
        assert len(got) == len(clients)
        by_port: dict[int, bytes] = {}
        for payload in got:
            message = json.loads(payload[payload.index(b"{"):])
            ports = message["flow-id"]["src-port"], message["flow-id"]["dst-port"]
            by_port[ports[0] if ports[1] == PORT else ports[1]] = payload
        for event in events:
            sport = event.sport if event.dport == PORT else event.dport
            info = round_.last(flow_key(event.flow))
            assert info is not None and info["bytes_acked"] == 1 + sent[sport]  # the client's socket
            members = json.dumps(enrichment.members(info, mode), separators=(",", ":"))[1:-1]
            assert by_port[sport] == OngoingFirefly(event).format(current, members, header)
        assert round_.last(flow_key(missing.flow)) is None


def test_both_orientations_announced_as_flows_of_their_own_share_the_socket(pair: Pair,
                                                                          sink: socket.socket) -> None:
    with held_connections(pair, 1, PORT) as clients:
        sport = clients[0].getsockname()[1]
        table = FlowTable()
        table.apply(start(sport), "test")
        table.apply(start(sport, reverse=True, activity=16), "test")
        fireflies = backend(pair, sink)
        with pair.a.entered():
            assert fireflies.ongoing(table) == 2
        messages = [json.loads(m) for m in received(sink)]
        assert sorted(m["context"]["activity-id"] for m in messages) == [15, 16]
        assert messages[0]["usage"] == messages[1]["usage"]
        fireflies.stop()


def test_the_round_reads_what_a_sweep_reads(pair: Pair) -> None:
    tcp = pair.tcp_connection()
    try:
        tcp.client.sendall(b"x" * 70_000)
        got = 0
        while got < 70_000:
            got += len(tcp.accepted.recv(1 << 20))
        event = FlowEvent.of("start", "tcp", A, B, tcp.sport, tcp.dport, 2, 15)
        with pair.a.entered():
            round_ = OngoingRound("", [])
            round_.put(flow_key(event.flow), OngoingFirefly(event).template(*round_.marks), None)
            assert round_.dump() == 1
            (swept,) = tcpinfo.sweep_info().values()
        info = round_.last(flow_key(event.flow))
        assert info is not None and set(info) == set(swept)
        assert {k: v for k, v in info.items() if k not in _CLOCKS} == \
            {k: v for k, v in swept.items() if k not in _CLOCKS}
        assert info["bytes_acked"] == 70_001 and info["pmtu"] == 1500
    finally:
        tcp.close()
    time.sleep(0.2)
    with pair.a.entered():
        assert round_.dump() == 0
    assert round_.last(flow_key(event.flow)) is None  # no socket now: no statistics


def test_a_round_in_steps_skips_flows_that_end_or_are_relabelled_meanwhile(pair: Pair,
                                                                         sink: socket.socket) -> None:
    with held_connections(pair, 1500, PORT) as clients:
        ports = [c.getsockname()[1] for c in clients]
        table = FlowTable()
        for port in ports:
            table.apply(start(port), "test")
        fireflies = backend(pair, sink)
        with pair.a.entered():
            assert fireflies.ongoing(table) == 1500
        assert len(received(sink)) == 1500

        with pair.a.entered():
            steps = fireflies.ongoing_steps(table, step=1000)
            assert next(steps) == 1000
        sent_first = {json.loads(m)["flow-id"]["src-port"] for m in received(sink)}
        later = [port for port in ports if port not in sent_first]
        ended, relabelled = later[0], later[1]
        with pair.a.entered():  # where the end firefly is sent from
            fireflies.apply([table.apply(FlowEvent.of("end", "tcp", A, B, ended, PORT, 2, 15), "test")])
            fireflies.apply([table.apply(start(relabelled, activity=16), "test")])
            assert list(steps)[-1] == 1498
        messages = [json.loads(m) for m in received(sink)]
        states = [m["flow-lifecycle"]["state"] for m in messages]
        assert states.count("ongoing") == 498 and states.count("end") == 1
        sent = [m["flow-id"]["src-port"] for m in messages]
        assert sent.count(ended) == 1 and relabelled not in sent  # its end firefly; nothing after it
        (end,) = [m for m in messages if m["flow-lifecycle"]["state"] == "end"]
        assert end["usage"] == {"received": 0, "sent": 1}  # the last round's numbers

        # The next round: every active flow once, the relabelled one with its new activity.
        with pair.a.entered():
            assert fireflies.ongoing(table) == 1499
        messages = [json.loads(m) for m in received(sink)]
        assert len(messages) == 1499
        (new,) = [m for m in messages if m["flow-id"]["src-port"] == relabelled]
        assert new["context"]["activity-id"] == 16
        fireflies.stop()


def test_a_flow_that_ends_and_comes_back_during_a_round_gets_its_fireflies_later(
        pair: Pair, sink: socket.socket) -> None:
    with held_connections(pair, 1500, PORT) as clients:
        ports = [c.getsockname()[1] for c in clients]
        # A flow that comes back gets the same label again.
        table = FlowTable(draw=lambda experiment, activity: encode(experiment, activity, 0))
        for port in ports:
            table.apply(start(port), "test")
        fireflies = backend(pair, sink)
        with pair.a.entered():
            steps = fireflies.ongoing_steps(table, step=1000)
            assert next(steps) == 1000
            sent_first = {json.loads(m)["flow-id"]["src-port"] for m in received(sink)}
            gone = next(port for port in ports if port not in sent_first)
            fireflies.apply([table.apply(FlowEvent.of("end", "tcp", A, B, gone, PORT, 2, 15), "test")])
            table.apply(start(gone), "test")  # back, with the same label
            assert list(steps)[-1] == 1499
            rest = [json.loads(m) for m in received(sink)]
            assert fireflies.ongoing(table) == 1500  # registered again
            again = [json.loads(m) for m in received(sink)]
        assert states_of(rest, gone) == ["end"]
        assert len(again) == 1500 and states_of(again, gone) == ["ongoing"]
        fireflies.stop()


def test_what_cannot_be_sent_is_counted_and_the_rest_goes(pair: Pair, sink: socket.socket,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A second collector without a route (namespace a has no IPv4 address): each of its
    fireflies is counted and logged as not sent, and the first collector gets all of them."""
    with held_connections(pair, 300, PORT) as clients:
        table = FlowTable()
        for client in clients:
            table.apply(start(client.getsockname()[1]), "test")
        fireflies = backend(pair, sink, collectors=["192.0.2.1:10514"])
        caplog.set_level(logging.WARNING)
        with pair.a.entered():
            assert fireflies.ongoing(table) == 300
        assert len(received(sink)) == 300
        families = {f.name: f.samples[0][1] for f in fireflies.families()}
        assert families["flowlabel_firefly_send_errors_total"] == 300
        assert families["flowlabel_fireflies_sent_total"] == 300
        assert "300 ongoing fireflies not sent, the last to 192.0.2.1 port 10514: Network is unreachable" \
            in caplog.text
        fireflies.stop()


def test_fireflies_go_to_each_flows_destination_too(pair: Pair) -> None:
    """With sendToDestination, a flow's firefly goes to its destination's firefly port as well."""
    with pair.b.entered():
        listener = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    listener.bind((B, 0))
    listener.setblocking(False)
    with listener, held_connections(pair, 20, PORT) as clients:
        table = FlowTable()
        for client in clients:
            table.apply(start(client.getsockname()[1]), "test")
        settings = {"sendToDestination": True, "destinationPort": listener.getsockname()[1], "enrich": True}
        fireflies = FireflyBackend(config.parse({"backends": {"firefly": settings}}).backends.firefly)
        with pair.a.entered():
            fireflies.start()
            assert fireflies.ongoing(table) == 20
        time.sleep(0.2)
        got = received(listener)
        assert sorted(json.loads(m)["flow-id"]["src-port"] for m in got) == \
            sorted(c.getsockname()[1] for c in clients)
        fireflies.stop()


def test_a_firefly_longer_than_a_datagram_is_counted_and_logged(pair: Pair, sink: socket.socket,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    with held_connections(pair, 3, PORT) as clients:
        table = FlowTable()
        for n, client in enumerate(clients):
            event = start(client.getsockname()[1])
            table.apply(event._replace(application="x" * 70_000) if n == 0 else event, "test")
        fireflies = backend(pair, sink)
        caplog.set_level(logging.WARNING)
        with pair.a.entered():
            assert fireflies.ongoing(table) == 2
        assert len(received(sink)) == 2
        families = {f.name: f.samples[0][1] for f in fireflies.families()}
        assert families["flowlabel_firefly_send_errors_total"] == 1
        assert "1 ongoing fireflies not written: longer than a datagram holds" in caplog.text
        fireflies.stop()
