"""Enriched fireflies: ongoing ones at the configured period, in flowd-go's three shapes, agreeing
with ``ss -ti``, valid against the published firefly schema; the end firefly carries the last usage."""

from __future__ import annotations

import json
import socket
import statistics
import time
from datetime import datetime
from pathlib import Path

import pytest
from e2e_support import Daemon
from test_telemetry import ss_info

from flowlabel import enrichment
from flowlabel.events import parse_firefly
from support.netns import A, B, Pair
from support.schemas import TEST_DATA, schema_validator_of

pytestmark = pytest.mark.netns

PERIOD_MS = 300


def collect(sock: socket.socket, seconds: float) -> list[tuple[float, bytes]]:
    got = []
    deadline = time.monotonic() + seconds
    sock.settimeout(0.1)
    while time.monotonic() < deadline:
        try:
            got.append((time.monotonic(), sock.recv(65536)))
        except socket.timeout:
            continue
    return got


@pytest.mark.parametrize("mode", ["lean", "compatible", ""])
def test_ongoing_fireflies_carry_the_connections_statistics(mode: str, pair: Pair, tmp_path: Path,
                                                           daemons: list[Daemon]) -> None:
    validator = schema_validator_of(TEST_DATA / "firefly.schema.json")
    with pair.a.entered():
        collector = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    collector.bind(("::1", 0))
    daemon = Daemon.standard(pair, tmp_path, enrichers={"period": PERIOD_MS, "netlink": {}}, backends={
        "ebpf": {"targetInterface": pair.if_a},
        "firefly": {"sendToDestination": False, "sendToCollector": True, "collectorAddress": "::1",
                    "collectorPort": collector.getsockname()[1], "enrich": True, "enrichmentMode": mode},
    })
    daemons.append(daemon.start())
    tcp = pair.tcp_connection()
    client, conn, sport, dport = tcp.client, tcp.accepted, tcp.sport, tcp.dport
    try:
        client.sendall(b"x" * 60000)  # fits the socket buffers: no reader thread needed
        got = 0
        while got < 60000:
            got += len(conn.recv(1 << 20))
        conn.sendall(b"y" * 500)
        got = 0
        while got < 500:
            got += len(client.recv(4096))
        daemon.write_pipe(f"start tcp {A} {sport} {B} {dport} 3 4\n")
        arrived = collect(collector, 1.6)
        idle = ss_info(pair, sport)
        daemon.write_pipe(f"end tcp {A} {sport} {B} {dport} 3 4\n")
        ended = collect(collector, 0.8)
    finally:
        tcp.close()
        collector.close()
    messages = [(at, json.loads(parse_firefly_json(raw))) for at, raw in arrived]
    ongoing = [(at, m) for at, m in messages if m["flow-lifecycle"]["state"] == "ongoing"]
    assert len(ongoing) >= 3, [m["flow-lifecycle"]["state"] for _, m in messages]
    # The period as the daemon kept it: the times its rounds wrote. Rounds keep to their times;
    # one that is late does not bring more (rounds a period or more late are skipped).
    written = [datetime.fromisoformat(m["flow-lifecycle"]["current-time"].replace("Z", "+00:00"))
               for _, m in ongoing]
    gaps = [(b - a).total_seconds() for a, b in zip(written, written[1:])]
    assert abs(statistics.median(gaps) - PERIOD_MS / 1000) < 0.1, gaps
    span = (written[-1] - written[0]).total_seconds()
    assert len(ongoing) <= span / (PERIOD_MS / 1000) + 2, gaps
    for _, message in ongoing:
        validator.validate(message)
        assert message["flow-id"]["src-port"] == sport and message["context"]["experiment-id"] == 3
        assert message["usage"] == {"received": 500, "sent": idle["bytes_acked"]}
    netlink = ongoing[-1][1]["netlink"]
    if mode == "lean":
        assert sorted(netlink) == ["cong", "tcpInfo"]
        assert set(netlink["tcpInfo"]) == set(enrichment.LEAN.values())
        assert list(netlink["tcpInfo"]) == sorted(netlink["tcpInfo"])
        assert abs(netlink["tcpInfo"]["rtt"] / 1000 - idle["rtt_ms"]) <= 0.001 + 1e-9
        assert netlink["tcpInfo"]["sndCwnd"] == idle["snd_cwnd"]
    elif mode == "compatible":
        assert list(netlink) == list(enrichment.COMPATIBLE)
        assert netlink["state"] == "established" and netlink["bytes_acked"] == idle["bytes_acked"]
        assert netlink["rtt"] == int(idle["rtt_ms"]) and netlink["snd_cwnd"] == idle["snd_cwnd"]
    else:
        info = netlink["tcpInfo"]
        assert set(info) <= set(enrichment.FULL.values()) and len(info) >= 50
        assert info["bytesAcked"] == idle["bytes_acked"] and info["bytesRecv"] == 500
        assert netlink["cong"]["algorithm"]
    states = [json.loads(parse_firefly_json(raw))["flow-lifecycle"]["state"] for _, raw in ended]
    assert "end" in states, (states, daemon.log()[-2000:])
    (end,) = [json.loads(parse_firefly_json(raw)) for _, raw in ended
              if json.loads(parse_firefly_json(raw))["flow-lifecycle"]["state"] == "end"]
    validator.validate(end)
    # The last round before the end: the same connection, idle, so the same bytes (its "time since the
    # last packet" members have grown).
    assert end["usage"] == {"received": 500, "sent": idle["bytes_acked"]}
    assert sorted(end["netlink"]) == sorted(netlink)
    assert parse_firefly(ended[-1][1]).state in ("end", "ongoing")  # what flowlabel reads back, too


def parse_firefly_json(raw: bytes) -> str:
    """The JSON of a firefly datagram (after its syslog header, if any)."""
    text = raw.decode()
    return text[text.index("{"):]
