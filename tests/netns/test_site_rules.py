"""Site rules on the wire: packets of flows nobody announced, marked (or not) by the classifier.

Namespace ``a`` (fd00::1) runs a Marker with rules; ``b`` (fd00::2) captures.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from flowlabel.flow import Flow
from flowlabel.label import decode
from flowlabel.marker import Marker
from flowlabel.rules import ANY_PORTS, PortRange, Rule, compile_rules
from support.netns import A, B, Packet, Pair

pytestmark = pytest.mark.netns

TCP, UDP = 6, 17


@pytest.fixture
def pair() -> Iterator[Pair]:
    with Pair() as pair:
        yield pair


def marker_with(pair: Pair, *rules: Rule) -> Marker:
    with pair.a.entered():
        return Marker([pair.if_a], rules=compile_rules(list(rules)))


def only_label(packets: list[Packet]) -> int:
    labels = {p.label for p in packets}
    assert len(labels) == 1, f"one label per connection, got {sorted(map(hex, labels))}"
    return labels.pop()


def test_a_rule_marks_a_tcp_connection_from_its_syn(pair: Pair) -> None:
    with marker_with(pair, Rule("rules[0]", ((2, 15),), TCP, ANY_PORTS, PortRange(5201, 5210))) as marker:
        packets = pair.tcp_packets(40001, 5205)
        syn = [p for p in packets if p.tcp_flags & 0x02]
        assert len(syn) == 1 and len(packets) > 3
        label = decode(only_label(packets))
        assert (label.experiment, label.activity) == (2, 15)
        assert only_label(pair.tcp_packets(40002, 80)) == 0  # not the rule's port
        assert marker.rule_hits()[0] == len(packets)


def test_a_rule_marks_udp_and_ports_outside_it_stay_unmarked(pair: Pair) -> None:
    with marker_with(pair, Rule("rules[0]", ((3, 4),), UDP, PortRange(6000, 6000))):
        seen = pair.labels([(6000, 7000), (6001, 7000)], count=4)
        (marked,) = seen[(6000, 7000)]
        assert (decode(marked).experiment, decode(marked).activity) == (3, 4)
        assert seen[(6001, 7000)] == {0}


def test_the_first_matching_rule_decides_and_an_exemption_leaves_packets_alone(pair: Pair) -> None:
    rules = (Rule("rules[0]", (), TCP, remote_net=ipaddress.IPv6Network(f"{B}/128")),
             Rule("rules[1]", ((2, 1),)))
    with marker_with(pair, *rules) as marker:
        assert only_label(pair.tcp_packets(40003, 5001)) == 0  # exempt: TCP to b
        (udp,) = pair.labels([(6002, 7002)])[(6002, 7002)]
        assert decode(udp).experiment == 2  # UDP is not exempt: the catch-all marks it
        hits = marker.rule_hits()
        assert hits[0] > 3 and hits[1] == 3


def test_an_announced_flow_wins_over_a_rule_even_once_the_rule_decided(pair: Pair) -> None:
    with marker_with(pair, Rule("rules[0]", ((2, 15),))) as marker:
        before = pair.labels([(6003, 7003)])[(6003, 7003)]
        assert {decode(label).experiment for label in before} == {2}  # the rule's, cached
        marker.add(Flow.of("udp", A, B, 6003, 7003), 0xABCDE)
        assert pair.labels([(6003, 7003)])[(6003, 7003)] == {0xABCDE}
        assert marker.remove(Flow.of("udp", A, B, 6003, 7003))
        assert pair.labels([(6003, 7003)])[(6003, 7003)] == before


def test_perfsonar_mode_marks_everything_with_stable_entropy_per_connection(pair: Pair) -> None:
    with marker_with(pair, Rule("plugins.perfsonar", ((7, 2),))):
        labels = [only_label(pair.tcp_packets(41000 + i, 5000 + i, nbytes=8 << 10)) for i in range(6)]
        assert {(decode(label).experiment, decode(label).activity) for label in labels} == {(7, 2)}
        assert len({decode(label).entropy for label in labels}) > 1  # chosen per connection
        udp = pair.labels([(6004, 7004)], count=5)[(6004, 7004)]
        assert len(udp) == 1 and decode(udp.pop()).experiment == 7


def test_a_rule_with_several_ids_gives_each_flow_one_pair(pair: Pair) -> None:
    pairs = ((2, 1), (3, 4), (4, 3))
    with marker_with(pair, Rule("plugins.iperf3", pairs, UDP)):
        flows = [(6100 + i, 7100) for i in range(24)]
        seen = pair.labels(flows, count=2)
        given = set()
        for flow in flows:
            (label,) = seen[flow]
            given.add((decode(label).experiment, decode(label).activity))
        assert given == set(pairs)  # 24 flows spread over the three pairs
