"""Property test: the classifier against the reference parser in packets.py.

Frames of every shape the classifier knows, and mangled ones (truncated, bytes
overwritten, random bytes, odd ethertypes and next headers), with the flow in
the map or not and look-alike flows beside it. For each: the verdict is
TC_ACT_OK, the output differs from the input at most in the 20 label bits,
and those change exactly when the model's 5-tuple is in the map, to the map's
value. The counters move as the model says.
"""

from __future__ import annotations

import struct

import packets as pk
import pytest
from harness import Classifier
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from flowlabel.marker import Program

pytestmark = pytest.mark.kernel

EXAMPLES = 2500

ADDRS = [pk.addr("2001:db8::1"), pk.addr("2001:db8::2"), pk.addr("2001:db8:ffff::10"), pk.addr("fe80::1")]
L3_ADDRS = [pk.l3_saddr(a) for a in ADDRS]
PORTS = [0, 53, 443, 1094, 5001, 40312, 65535]
WALKED = [pk.IPPROTO_HOPOPTS, pk.IPPROTO_ROUTING, pk.IPPROTO_DSTOPTS, pk.IPPROTO_FRAGMENT, pk.IPPROTO_AH]

ports = st.one_of(st.sampled_from(PORTS), st.integers(0, 0xFFFF))
labels = st.integers(0, 0xFFFFFFFF)


def mostly(draw: st.DrawFn, common: st.SearchStrategy, rare: st.SearchStrategy, percent: int = 85):
    """A value from ``common`` about ``percent`` % of the time, else from ``rare``."""
    return draw(common if draw(st.integers(0, 99)) < percent else rare)


@st.composite
def ext_headers(draw: st.DrawFn) -> pk.Ext:
    kind = mostly(draw, st.sampled_from(WALKED),
                  st.one_of(st.sampled_from([pk.IPPROTO_ESP, pk.IPPROTO_NONE]), st.integers(0, 255)))
    if kind == pk.IPPROTO_FRAGMENT:
        offset = mostly(draw, st.just(0), st.integers(1, 0x1FFF), 70)
        return pk.Ext(kind, frag_offset=offset, more=draw(st.booleans()))
    return pk.Ext(kind, hdrlen=draw(st.sampled_from([0, 0, 1, 1, 2, 3, 4, 31, 255])))


@st.composite
def ipv6_packets(draw: st.DrawFn, l3: bool) -> bytes:
    pool = L3_ADDRS if l3 else ADDRS
    saddr = mostly(draw, st.sampled_from(pool), st.binary(min_size=16, max_size=16))
    daddr = mostly(draw, st.sampled_from(ADDRS), st.binary(min_size=16, max_size=16))
    proto = mostly(draw, st.sampled_from([pk.IPPROTO_TCP, pk.IPPROTO_UDP]), st.integers(0, 255))
    payload = draw(st.binary(max_size=24))
    if proto == pk.IPPROTO_TCP:
        options = draw(st.sampled_from([b"", b"\x01\x01\x01\x01", bytes([2, 4, 5, 0xB4])]))
        transport = pk.tcp(draw(ports), draw(ports), payload, options=options)
    elif proto == pk.IPPROTO_UDP:
        transport = pk.udp(draw(ports), draw(ports), payload)
    else:
        transport = payload
    exts = mostly(draw, st.lists(ext_headers(), max_size=3), st.lists(ext_headers(), max_size=8), 80)
    version = mostly(draw, st.just(6), st.integers(0, 15), 95)
    return pk.ipv6(saddr, daddr, proto, transport, exts=exts, tclass=draw(st.integers(0, 255)),
                label=draw(st.integers(0, pk.LABEL_MASK)), version=version)


vlan_tag = st.tuples(st.sampled_from([pk.ETH_P_8021Q, pk.ETH_P_8021AD]), st.integers(0, 0xFFFF))


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(frame, l3): a frame for the Ethernet program, or a packet for the L3 one."""
    l3 = mostly(draw, st.just(False), st.just(True), 75)
    vlan_tags = st.lists(vlan_tag, max_size=2) if draw(st.integers(0, 9)) else st.lists(vlan_tag, min_size=3,
                                                                                          max_size=4)
    shape = mostly(draw, st.just("ipv6"), st.sampled_from(["ipv4", "other", "random"]), 80)
    if shape == "ipv6":
        packet = draw(ipv6_packets(l3))
        if not l3:
            ethertype = mostly(draw, st.just(pk.ETH_P_IPV6), st.integers(0, 0xFFFF), 95)
            packet = pk.ethernet(packet, ethertype, tags=draw(vlan_tags))
    elif shape == "ipv4":
        v4 = pk.ipv4(bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]), pk.IPPROTO_TCP,
                     pk.tcp(draw(ports), draw(ports)))
        packet = v4 if l3 else pk.ethernet(v4, pk.ETH_P_IP, tags=draw(vlan_tags))
    elif shape == "other":
        ethertype = draw(st.sampled_from([pk.ETH_P_ARP, 0x88CC, 0x0042]))
        packet = pk.ethernet(draw(st.binary(max_size=60)), ethertype, tags=draw(vlan_tags))
    else:
        packet = draw(st.binary(min_size=14, max_size=120))
        marker = draw(st.sampled_from([None, pk.ETH_P_IPV6, pk.ETH_P_8021Q, pk.ETH_P_8021AD]))
        if marker is not None:
            packet = packet[:12] + struct.pack("!H", marker) + packet[14:]

    # Mangling, now and then: overwrite a few bytes, cut the frame short.
    if draw(st.integers(0, 3)) == 0:
        for pos, value in draw(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1,
                                        max_size=3)):
            if pos < len(packet):
                packet = packet[:pos] + bytes([value]) + packet[pos + 1:]
    if draw(st.integers(0, 3)) == 0:
        # Mostly beyond what BPF_PROG_TEST_RUN insists on (Ethernet + IPv6 header).
        shortest = mostly(draw, st.just(min(len(packet), 54)), st.just(0), 80)
        packet = packet[:draw(st.integers(shortest, len(packet)))]
    return packet, l3


def look_alikes(key: pk.FlowKey) -> list[pk.FlowKey]:
    """Keys that differ from ``key`` in one field: they must never match it."""
    other = pk.IPPROTO_UDP if key.proto == pk.IPPROTO_TCP else pk.IPPROTO_TCP
    return [
        key._replace(proto=other),
        key._replace(saddr=key.daddr, daddr=key.saddr, sport=key.dport, dport=key.sport),
        key._replace(sport=key.dport, dport=key.sport),
        key._replace(sport=(key.sport + 1) & 0xFFFF),
        key._replace(daddr=key.daddr[:-1] + bytes([key.daddr[-1] ^ 1])),
    ]


COUNTED = {
    "non_ipv6": {"seen": 1, "non_ipv6": 1},
    "unparsed": {"seen": 1, "ipv6": 1, "unparsed": 1},
    "marked": {"seen": 1, "ipv6": 1, "marked": 1},
    "missed": {"seen": 1, "ipv6": 1, "missed": 1},
}


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=frames(), data=st.data())
def test_classifier_matches_the_model(l2_program: Program, l3_program: Program,
                                      case: tuple[bytes, bool], data: st.DataObject) -> None:
    frame, l3 = case
    marker = Classifier(l3_program if l3 else l2_program, l3=l3)
    verdict = pk.classify(frame, l3=l3)

    entries: dict[pk.FlowKey, int] = {}
    if verdict.key is not None:
        if data.draw(st.booleans(), label="in map"):
            entries[verdict.key] = data.draw(labels, label="label")
        for decoy in data.draw(st.lists(st.sampled_from(look_alikes(verdict.key)), max_size=3, unique=True)):
            entries.setdefault(decoy, data.draw(labels))
    try:
        for key, label in entries.items():
            marker.add(key, label)
        refusal = pk.kernel_refuses(frame)
        if refusal is not False and marker.refused(frame):
            event("refused by BPF_PROG_TEST_RUN")
            return
        assert refusal is not True, f"the kernel ran a frame of {len(frame)} bytes it must refuse"
        out = marker.run(frame)
    finally:
        marker.clear()

    assert out.run.retval == pk.TC_ACT_OK
    assert len(out.run.data) == len(frame)
    label: int | None = entries.get(verdict.key) if verdict.key is not None else None
    if label is None:
        assert out.run.data == frame
        outcome = "missed" if verdict.outcome == "flow" else verdict.outcome
    else:
        assert verdict.ip6_offset is not None
        assert out.run.data == pk.with_label(frame, verdict.ip6_offset, label & pk.LABEL_MASK)
        outcome = "marked"
    assert out.counted == COUNTED[outcome]
    event(f"{'l3' if l3 else 'l2'} {outcome}")
