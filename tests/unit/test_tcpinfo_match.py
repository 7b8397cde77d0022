"""Matching an announced flow to its local socket in a sweep."""

from __future__ import annotations

from flowlabel import tcpinfo
from flowlabel.flow import Flow

LOCAL, REMOTE = "2001:db8::a", "2001:db8::b"


def sockets(value: object) -> dict[tcpinfo.Socket, object]:
    flow = Flow.of("tcp", LOCAL, REMOTE, 40000, 7000)
    return {(flow.src.packed, flow.dst.packed, 40000, 7000): value}


def test_a_flow_is_found_in_either_orientation() -> None:
    found = sockets("stats")
    assert tcpinfo.of_flow(found, Flow.of("tcp", LOCAL, REMOTE, 40000, 7000)) == "stats"
    assert tcpinfo.of_flow(found, Flow.of("tcp", REMOTE, LOCAL, 7000, 40000)) == "stats"
    assert tcpinfo.of_flow(found, Flow.of("tcp", REMOTE, LOCAL, 7000, 40001)) is None


def test_statistics_that_are_false_still_match() -> None:
    # a dict with no fields is false, and still a match
    assert tcpinfo.of_flow(sockets({}), Flow.of("tcp", LOCAL, REMOTE, 40000, 7000)) == {}
    assert tcpinfo.of_flow(sockets({}), Flow.of("tcp", REMOTE, LOCAL, 7000, 40000)) == {}


def test_udp_and_ipv4_flows_have_no_tcp_socket() -> None:
    assert tcpinfo.of_flow(sockets("stats"), Flow.of("udp", LOCAL, REMOTE, 40000, 7000)) is None
    assert tcpinfo.of_flow(sockets("stats"), Flow.of("tcp", "192.0.2.1", "192.0.2.2", 40000, 7000)) is None
