"""A round of ongoing fireflies in steps: the daemon's thread is let go between them, and a flow
that ends meanwhile gets no ongoing firefly after its end."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from flowlabel import config, enrichment, tcpinfo
from flowlabel.backends.firefly import FireflyBackend
from flowlabel.events import FlowEvent
from flowlabel.flow import FLOW_KEY
from flowlabel.flowtable import FlowTable
from flowlabel.label import encode

SRC, DST, DPORT = "2001:db8::1", "2001:db8::2", 7000


def event(state: str, sport: int) -> FlowEvent:
    return FlowEvent.of(state, "tcp", SRC, DST, sport, DPORT, 2, 15)


@pytest.fixture
def sink() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind(("::1", 0))
    s.setblocking(False)
    with s:
        yield s


def received(sink: socket.socket) -> list[dict[str, object]]:
    out = []
    while True:
        try:
            out.append(json.loads(sink.recv(65536)))
        except BlockingIOError:
            return out


def lean_fireflies(table: FlowTable, sink: socket.socket, monkeypatch: pytest.MonkeyPatch) -> FireflyBackend:
    """2,500 TCP flows started in ``table``, and a backend that sends their lean ongoing fireflies
    to ``sink``; every flow has a socket here, as a sweep would find it (no real connections)."""
    for n in range(2500):
        table.apply(event("start", 20000 + n), "test")
    info = {**{name: 1 for name in enrichment.LEAN_FIELDS}, "cong": "cubic"}
    sockets = {FLOW_KEY.unpack(key)[:4]: dict(info) for key, _ in table.labels()}
    monkeypatch.setattr(tcpinfo, "sweep_fields", lambda names: sockets)
    keys = {"sendToDestination": False, "sendToCollector": True, "collectorAddress": "::1",
            "collectorPort": sink.getsockname()[1], "enrich": True, "enrichmentMode": "lean"}
    backend = FireflyBackend(config.parse({"backends": {"firefly": keys}}).backends.firefly)
    backend.start()
    return backend


def test_a_round_in_steps_skips_a_flow_that_ended_meanwhile(sink: socket.socket,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    table = FlowTable()
    backend = lean_fireflies(table, sink, monkeypatch)
    assert backend.ongoing(table) == 2500 and len(received(sink)) == 2500  # each firefly now written

    steps = backend.ongoing_steps(table, step=1000)
    assert next(steps) == 1000
    ended = 20000 + 1500  # a flow of a later step
    backend.apply([table.apply(event("end", ended), "test")])
    assert list(steps)[-1] == 2499
    messages = received(sink)
    states = [m["flow-lifecycle"]["state"] for m in messages]  # type: ignore[index]
    assert states.count("ongoing") == 2499 and states.count("end") == 1
    ports = [m["flow-id"]["src-port"] for m in messages]  # type: ignore[index]
    assert ports.count(ended) == 1  # its end firefly, and no ongoing one after it

    # All at once, the same round: every active flow once.
    assert backend.ongoing(table) == 2499 and len(received(sink)) == 2499
    backend.stop()


def test_a_flow_that_ends_and_comes_back_during_a_round_gets_its_fireflies_later(
        sink: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    table = FlowTable(draw=lambda experiment, activity: encode(experiment, activity, 0))  # same label again
    backend = lean_fireflies(table, sink, monkeypatch)

    steps = backend.ongoing_steps(table, step=1000)  # the first round: no firefly written yet
    assert next(steps) == 1000
    table.apply(event("end", 21500), "test")  # before its turn
    assert list(steps)[-1] == 2499
    table.apply(event("start", 21500), "test")  # back, with the same label
    received(sink)
    assert backend.ongoing(table) == 2500  # its firefly is written now, not remembered as unwritable
    backend.stop()
