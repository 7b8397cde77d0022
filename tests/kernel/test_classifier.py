"""The classifier on crafted frames, through BPF_PROG_TEST_RUN.

Every expected frame is built a second time by the packet builders (with the
label the map holds), never derived from the program's output.
"""

from __future__ import annotations

import pytest
from harness import OBJECT, Classifier
from packets import (
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_ARP,
    ETH_P_IP,
    IPPROTO_AH,
    IPPROTO_DSTOPTS,
    IPPROTO_ESP,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ICMPV6,
    IPPROTO_NONE,
    IPPROTO_ROUTING,
    IPPROTO_TCP,
    IPPROTO_UDP,
    MAX_EXT_HDRS,
    TC_ACT_OK,
    Ext,
    FlowKey,
    addr,
    classify,
    ethernet,
    ipv4,
    ipv6,
    l3_saddr,
    tcp,
    udp,
    with_label,
)

from flowlabel.marker import Program

pytestmark = pytest.mark.kernel

SRC = addr("2001:db8:10::1")
DST = addr("2001:db8:20::2")
SPORT, DPORT = 40312, 5001
LABEL = 0xABCDE
PAYLOAD = b"flowlabel test payload"

TCP_KEY = FlowKey(IPPROTO_TCP, SRC, DST, SPORT, DPORT)
UDP_KEY = FlowKey(IPPROTO_UDP, SRC, DST, SPORT, DPORT)

MARKED = {"seen": 1, "ipv6": 1, "marked": 1}
MISSED = {"seen": 1, "ipv6": 1, "missed": 1}
UNPARSED = {"seen": 1, "ipv6": 1, "unparsed": 1}
NON_IPV6 = {"seen": 1, "non_ipv6": 1}


def tcp_frame(label: int = 0, *, tclass: int = 0, exts: tuple[Ext, ...] = (), tags=(),
              payload: bytes = PAYLOAD) -> bytes:
    return ethernet(ipv6(SRC, DST, IPPROTO_TCP, tcp(SPORT, DPORT, payload), exts=exts,
                         tclass=tclass, label=label), tags=tags)


def udp_frame(label: int = 0, *, exts: tuple[Ext, ...] = (), tags=()) -> bytes:
    return ethernet(ipv6(SRC, DST, IPPROTO_UDP, udp(SPORT, DPORT, PAYLOAD), exts=exts, label=label),
                    tags=tags)


def assert_marked(marker: Classifier, frame: bytes, expected: bytes) -> None:
    assert expected != frame
    out = marker.run(frame)
    assert out.run.retval == TC_ACT_OK
    assert out.run.data == expected
    assert out.counted == MARKED


def assert_untouched(marker: Classifier, frame: bytes, counted: dict[str, int]) -> None:
    out = marker.run(frame)
    assert out.run.retval == TC_ACT_OK
    assert out.run.data == frame
    assert out.counted == counted


# -- plain frames ---------------------------------------------------------------


def test_tcp_hit(marker: Classifier) -> None:
    marker.add(TCP_KEY, LABEL)
    assert_marked(marker, tcp_frame(), tcp_frame(LABEL))


def test_udp_hit(marker: Classifier) -> None:
    marker.add(UDP_KEY, LABEL)
    assert_marked(marker, udp_frame(), udp_frame(LABEL))


def test_hit_without_payload(marker: Classifier) -> None:
    marker.add(TCP_KEY, LABEL)
    assert_marked(marker, tcp_frame(payload=b""), tcp_frame(LABEL, payload=b""))


def test_udp_hit_shorter_than_a_tcp_header(marker: Classifier) -> None:
    marker.add(UDP_KEY, LABEL)
    frame = ethernet(ipv6(SRC, DST, IPPROTO_UDP, udp(SPORT, DPORT)))
    assert len(frame) == 14 + 40 + 8
    assert_marked(marker, frame, ethernet(ipv6(SRC, DST, IPPROTO_UDP, udp(SPORT, DPORT), label=LABEL)))


def test_miss(marker: Classifier) -> None:
    assert_untouched(marker, tcp_frame(), MISSED)
    assert_untouched(marker, udp_frame(), MISSED)


def test_only_the_exact_five_tuple_matches(marker: Classifier) -> None:
    # Same flow with the other protocol, the reverse direction, and swapped ports.
    marker.add(UDP_KEY, 1)
    marker.add(FlowKey(IPPROTO_TCP, DST, SRC, DPORT, SPORT), 2)
    marker.add(FlowKey(IPPROTO_TCP, SRC, DST, DPORT, SPORT), 3)
    marker.add(FlowKey(IPPROTO_TCP, SRC, DST, SPORT, DPORT + 1), 4)
    assert_untouched(marker, tcp_frame(), MISSED)


def test_deleted_flow_is_no_longer_marked(marker: Classifier) -> None:
    marker.add(TCP_KEY, LABEL)
    assert_marked(marker, tcp_frame(), tcp_frame(LABEL))
    marker.remove(TCP_KEY)
    assert_untouched(marker, tcp_frame(), MISSED)


@pytest.mark.parametrize("payload", [
    ipv4(bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]), IPPROTO_TCP, tcp(SPORT, DPORT, PAYLOAD)),
    ipv4(bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]), IPPROTO_UDP, udp(SPORT, DPORT, PAYLOAD)),
], ids=["tcp", "udp"])
def test_ipv4_passes_untouched(marker: Classifier, payload: bytes) -> None:
    marker.add(TCP_KEY, LABEL)
    assert_untouched(marker, ethernet(payload, ETH_P_IP), NON_IPV6)


def test_arp_passes_untouched(marker: Classifier) -> None:
    assert_untouched(marker, ethernet(bytes(28), ETH_P_ARP), NON_IPV6)


def test_ipv6_that_is_not_tcp_or_udp_is_unparsed(marker: Classifier) -> None:
    frame = ethernet(ipv6(SRC, DST, IPPROTO_ICMPV6, bytes([128, 0, 0, 0, 0, 1, 0, 1])))
    assert_untouched(marker, frame, UNPARSED)


def test_wrong_ip_version_is_unparsed(marker: Classifier) -> None:
    marker.add(TCP_KEY, LABEL)
    frame = ethernet(ipv6(SRC, DST, IPPROTO_TCP, tcp(SPORT, DPORT), version=4))
    assert_untouched(marker, frame, UNPARSED)


# -- the label word -------------------------------------------------------------


@pytest.mark.parametrize("tclass", [0xB8, 0x03, 0xBB, 0xFF, 0x01], ids=hex)
def test_traffic_class_and_ecn_are_preserved(marker: Classifier, tclass: int) -> None:
    marker.add(TCP_KEY, LABEL)
    assert_marked(marker, tcp_frame(tclass=tclass), tcp_frame(LABEL, tclass=tclass))


@pytest.mark.parametrize(("old", "new"), [(0xFFFFF, 0x00001), (0x12345, 0xFEDCB), (0x54321, 0)],
                         ids=["all-ones", "other", "to-zero"])
def test_existing_label_is_overwritten(marker: Classifier, old: int, new: int) -> None:
    marker.add(TCP_KEY, new)
    assert_marked(marker, tcp_frame(old, tclass=0xB8), tcp_frame(new, tclass=0xB8))


def test_same_label_leaves_the_frame_as_it_was(marker: Classifier) -> None:
    marker.add(TCP_KEY, LABEL)
    out = marker.run(tcp_frame(LABEL))
    assert out.run.data == tcp_frame(LABEL)
    assert out.counted == MARKED


def test_only_20_bits_of_the_map_value_are_written(marker: Classifier) -> None:
    marker.add(TCP_KEY, 0xFFF00000 | LABEL)
    assert_marked(marker, tcp_frame(tclass=0x03), tcp_frame(LABEL, tclass=0x03))


# -- extension headers ------------------------------------------------------------

HOP = Ext(IPPROTO_HOPOPTS)
DSTOPT = Ext(IPPROTO_DSTOPTS, hdrlen=1)
ROUTING = Ext(IPPROTO_ROUTING, hdrlen=2)
AH = Ext(IPPROTO_AH, hdrlen=4)
FIRST_FRAGMENT = Ext(IPPROTO_FRAGMENT, frag_offset=0, more=True)
LATER_FRAGMENT = Ext(IPPROTO_FRAGMENT, frag_offset=185, more=True)


@pytest.mark.parametrize("exts", [
    (HOP, DSTOPT),
    (ROUTING,),
    (HOP, ROUTING, DSTOPT),
    (AH,),
    (FIRST_FRAGMENT,),
    (Ext(IPPROTO_FRAGMENT, frag_offset=0, more=False),),
    (HOP, DSTOPT, ROUTING, FIRST_FRAGMENT, AH, DSTOPT),
    (Ext(IPPROTO_HOPOPTS, hdrlen=255),),
], ids=["hop+dest", "routing", "hop+routing+dest", "ah", "first-fragment", "atomic-fragment",
        "six-headers", "long-hop-by-hop"])
@pytest.mark.parametrize("proto", [IPPROTO_TCP, IPPROTO_UDP], ids=["tcp", "udp"])
def test_extension_headers_before_the_ports(marker: Classifier, exts: tuple[Ext, ...], proto: int) -> None:
    assert len(exts) <= MAX_EXT_HDRS
    build = tcp_frame if proto == IPPROTO_TCP else udp_frame
    marker.add(FlowKey(proto, SRC, DST, SPORT, DPORT), LABEL)
    assert_marked(marker, build(exts=exts), build(LABEL, exts=exts))


def test_later_fragment_is_not_marked(marker: Classifier) -> None:
    # Its payload even looks like the flow's TCP header: it must not be read as one.
    marker.add(TCP_KEY, LABEL)
    assert_untouched(marker, tcp_frame(exts=(LATER_FRAGMENT,)), UNPARSED)
    assert_untouched(marker, tcp_frame(exts=(HOP, Ext(IPPROTO_FRAGMENT, frag_offset=1))), UNPARSED)


def test_too_many_extension_headers_is_unparsed(marker: Classifier) -> None:
    marker.add(TCP_KEY, LABEL)
    assert_untouched(marker, tcp_frame(exts=(DSTOPT,) * (MAX_EXT_HDRS + 1)), UNPARSED)


@pytest.mark.parametrize("nexthdr", [IPPROTO_ESP, IPPROTO_NONE, 253, 135],
                         ids=["esp", "none", "experimental", "mobility"])
def test_unwalkable_next_header_is_unparsed(marker: Classifier, nexthdr: int) -> None:
    marker.add(TCP_KEY, LABEL)
    frame = ethernet(ipv6(SRC, DST, nexthdr, tcp(SPORT, DPORT, PAYLOAD), exts=(HOP,)))
    assert_untouched(marker, frame, UNPARSED)
    frame = ethernet(ipv6(SRC, DST, nexthdr, tcp(SPORT, DPORT, PAYLOAD)))
    assert_untouched(marker, frame, UNPARSED)


# -- VLAN tags ----------------------------------------------------------------------


@pytest.mark.parametrize("tags", [
    ((ETH_P_8021Q, 100),),
    ((ETH_P_8021AD, 100),),
    ((ETH_P_8021AD, 100), (ETH_P_8021Q, 200)),
    ((ETH_P_8021Q, 100), (ETH_P_8021Q, 200)),
], ids=["8021q", "8021ad", "qinq", "double-8021q"])
def test_vlan_tags(marker: Classifier, tags) -> None:
    marker.add(TCP_KEY, LABEL)
    marker.add(UDP_KEY, LABEL ^ 0xFFFFF)
    assert_marked(marker, tcp_frame(tags=tags), tcp_frame(LABEL, tags=tags))
    assert_marked(marker, udp_frame(tags=tags, exts=(HOP, FIRST_FRAGMENT)),
                  udp_frame(LABEL ^ 0xFFFFF, tags=tags, exts=(HOP, FIRST_FRAGMENT)))


def test_vlan_priority_is_not_read_as_an_ip_version(marker: Classifier) -> None:
    # Priority 3 puts a 6 where an untagged frame has the IPv6 version, and the
    # inner label a 6 (TCP) where it would have the next header.
    marker.add(TCP_KEY, LABEL)
    tags = ((ETH_P_8021Q, 0x6000 | 42),)
    frame = tcp_frame(0x00600, tags=tags)
    assert frame[14] >> 4 == 6 and frame[20] == IPPROTO_TCP
    assert_marked(marker, frame, tcp_frame(LABEL, tags=tags))


def test_vlan_miss(marker: Classifier) -> None:
    assert_untouched(marker, tcp_frame(tags=((ETH_P_8021AD, 1), (ETH_P_8021Q, 2))), MISSED)


def test_ipv4_behind_vlan_tags_is_not_ipv6(marker: Classifier) -> None:
    v4 = ipv4(bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]), IPPROTO_TCP, tcp(SPORT, DPORT))
    assert_untouched(marker, ethernet(v4, ETH_P_IP, tags=((ETH_P_8021Q, 7),)), NON_IPV6)
    assert_untouched(marker, ethernet(v4, ETH_P_IP, tags=((ETH_P_8021AD, 7), (ETH_P_8021Q, 8))), NON_IPV6)


def test_third_vlan_tag_is_not_looked_through(marker: Classifier) -> None:
    marker.add(TCP_KEY, LABEL)
    tags = ((ETH_P_8021AD, 1), (ETH_P_8021Q, 2), (ETH_P_8021Q, 3))
    assert_untouched(marker, tcp_frame(tags=tags), NON_IPV6)


# -- devices without a link-layer header --------------------------------------------

L3_SRC = l3_saddr(SRC)
L3_KEY = FlowKey(IPPROTO_TCP, L3_SRC, DST, SPORT, DPORT)


def l3_packet(label: int = 0, *, proto: int = IPPROTO_TCP, exts: tuple[Ext, ...] = (),
              tclass: int = 0) -> bytes:
    transport = tcp(SPORT, DPORT, PAYLOAD) if proto == IPPROTO_TCP else udp(SPORT, DPORT, PAYLOAD)
    return ipv6(L3_SRC, DST, proto, transport, exts=exts, label=label, tclass=tclass)


def test_l3_hit(marker_l3: Classifier) -> None:
    marker_l3.add(L3_KEY, LABEL)
    assert_marked(marker_l3, l3_packet(tclass=0xBB), l3_packet(LABEL, tclass=0xBB))
    assert_marked(marker_l3, l3_packet(exts=(HOP, ROUTING)), l3_packet(LABEL, exts=(HOP, ROUTING)))


def test_l3_udp_hit(marker_l3: Classifier) -> None:
    marker_l3.add(L3_KEY._replace(proto=IPPROTO_UDP), LABEL)
    assert_marked(marker_l3, l3_packet(proto=IPPROTO_UDP), l3_packet(LABEL, proto=IPPROTO_UDP))


def test_l3_short_udp_hit(marker_l3: Classifier) -> None:
    marker_l3.add(L3_KEY._replace(proto=IPPROTO_UDP), LABEL)
    # 54 bytes: the least BPF_PROG_TEST_RUN takes, and less than IPv6 + TCP.
    packet = ipv6(L3_SRC, DST, IPPROTO_UDP, udp(SPORT, DPORT, b"abcdef"))
    assert len(packet) == 54
    expected = ipv6(L3_SRC, DST, IPPROTO_UDP, udp(SPORT, DPORT, b"abcdef"), label=LABEL)
    assert_marked(marker_l3, packet, expected)


def test_l3_miss(marker_l3: Classifier) -> None:
    assert_untouched(marker_l3, l3_packet(), MISSED)


def test_l3_ipv4_is_not_ipv6(marker_l3: Classifier) -> None:
    # skb->protocol, taken from "bytes 12-13", here IPv4 source address bytes 0-1.
    v4 = ipv4(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), IPPROTO_TCP, tcp(SPORT, DPORT, PAYLOAD))
    assert_untouched(marker_l3, v4, NON_IPV6)


def test_l3_does_not_look_for_vlan_tags(marker_l3: Classifier) -> None:
    packet = l3_packet()
    tagged = packet[:12] + ETH_P_8021Q.to_bytes(2, "big") + packet[14:]
    assert_untouched(marker_l3, tagged, NON_IPV6)


def test_l2_program_does_not_mark_a_bare_ipv6_packet(marker: Classifier) -> None:
    # It takes the source address for a MAC header and finds no IPv6 version behind it.
    marker.add(L3_KEY, LABEL)
    assert classify(l3_packet()).outcome == "unparsed"
    assert_untouched(marker, l3_packet(), UNPARSED)


# -- truncation -----------------------------------------------------------------------

SHAPES = {
    "tcp": tcp_frame(payload=b""),
    "udp-qinq-hop-fragment": udp_frame(exts=(HOP, FIRST_FRAGMENT),
                                       tags=((ETH_P_8021AD, 5), (ETH_P_8021Q, 6))),
    "tcp-vlan-dest-routing-ah": tcp_frame(exts=(DSTOPT, ROUTING, AH), tags=((ETH_P_8021Q, 9),), payload=b""),
}


def header_length(frame: bytes, l3: bool = False) -> int:
    """Where the fixed transport header ends (the shortest markable prefix)."""
    verdict = classify(frame, l3=l3)
    assert verdict.outcome == "flow" and verdict.key is not None
    for n in range(len(frame) + 1):
        if classify(frame[:n], l3=l3).outcome == "flow":
            return n
    raise AssertionError("unreachable")


@pytest.mark.parametrize("name", SHAPES)
def test_every_truncated_prefix_passes_untouched(marker: Classifier, name: str) -> None:
    frame = SHAPES[name]
    key = classify(frame).key
    assert key is not None
    marker.add(key, LABEL)
    end = header_length(frame)
    tried = 0
    for n in range(end):
        prefix = frame[:n]
        if marker.refused(prefix):
            continue
        expected = classify(prefix)
        counted = NON_IPV6 if expected.outcome == "non_ipv6" else UNPARSED
        assert_untouched(marker, prefix, counted)
        tried += 1
    assert tried > 0
    # From the end of the transport header on, the prefix is a markable packet.
    full = frame + PAYLOAD
    ip6_offset = classify(frame).ip6_offset
    assert ip6_offset is not None
    for n in range(end, len(full) + 1):
        assert_marked(marker, full[:n], with_label(full[:n], ip6_offset, LABEL))


def test_every_truncated_l3_prefix_passes_untouched(marker_l3: Classifier) -> None:
    packet = l3_packet(exts=(HOP, DSTOPT))
    marker_l3.add(L3_KEY, LABEL)
    end = header_length(packet, l3=True)
    for n in range(end):
        prefix = packet[:n]
        if marker_l3.refused(prefix):
            continue
        assert_untouched(marker_l3, prefix, UNPARSED)
    assert_marked(marker_l3, packet[:end], l3_packet(LABEL, exts=(HOP, DSTOPT))[:end])


def test_short_input_is_refused_by_the_kernel_not_dropped(marker: Classifier) -> None:
    # BPF_PROG_TEST_RUN wants an Ethernet header and, for IPv6, a whole IPv6 header.
    assert marker.refused(tcp_frame()[:13])
    assert marker.refused(tcp_frame()[:53])
    assert not marker.refused(tcp_frame()[:54])


# -- configurations -----------------------------------------------------------------


@pytest.mark.parametrize("l3", [False, True], ids=["l2", "l3"])
def test_loads_with_debug_on_and_off(l3: bool) -> None:
    frame = l3_packet() if l3 else tcp_frame()
    key = L3_KEY if l3 else TCP_KEY
    sizes = {}
    for debug in (False, True):
        with Program(OBJECT, debug=debug, l3=l3, max_flows=1024) as program:
            program.flows.put(program.flows.key(*key), LABEL)
            run = program.test_run(frame)
            assert run.retval == TC_ACT_OK
            assert run.data == (l3_packet(LABEL) if l3 else tcp_frame(LABEL))
            assert program.counters()["marked"] == 1
            sizes[debug] = program.info().jited_bytes
    # With debug off the verifier drops the bpf_printk calls.
    assert sizes[False] < sizes[True]


def test_counters_reset(marker: Classifier) -> None:
    marker.run(tcp_frame())
    assert marker.program.counters()["seen"] > 0
    marker.program.reset_counters()
    assert set(marker.program.counters().values()) == {0}


def test_repeat_counts_every_run(marker: Classifier) -> None:
    marker.add(TCP_KEY, LABEL)
    before = marker.program.counters()
    run = marker.program.test_run(tcp_frame(), repeat=100)
    after = marker.program.counters()
    assert run.data == tcp_frame(LABEL)
    assert after["marked"] - before["marked"] == 100
    assert after["seen"] - before["seen"] == 100
