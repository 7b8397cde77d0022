"""Frames for the classifier tests, built by hand, and a reference parser.

The builders make Ethernet frames (optionally with 802.1Q/802.1AD tags), IPv6
packets with extension headers, TCP, UDP and IPv4. :func:`classify` is an
independent model of what the classifier must make of any byte string; the
property test checks the program against it.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
VLAN_TPIDS = (ETH_P_8021Q, ETH_P_8021AD)

IPPROTO_HOPOPTS = 0
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60

IPV6_HLEN = 40
TCP_HLEN = 20
UDP_HLEN = 8
#: Extension headers the classifier walks before it gives up.
MAX_EXT_HDRS = 6
#: VLAN tags it looks through.
MAX_VLAN_TAGS = 2

TC_ACT_OK = 0
LABEL_MASK = 0xFFFFF

SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("020000000002")


def addr(text: str) -> bytes:
    """An IPv6 address in its 16 network-order bytes."""
    return ipaddress.IPv6Address(text).packed


# -- link layer ---------------------------------------------------------------


def ethernet(payload: bytes, ethertype: int = ETH_P_IPV6, tags: Sequence[tuple[int, int]] = (),
             dst: bytes = DST_MAC, src: bytes = SRC_MAC) -> bytes:
    """An Ethernet frame; ``tags`` are (TPID, TCI) pairs, outermost first.

    A TCI is priority (3 bits), drop eligibility (1) and VLAN ID (12).
    """
    types = [tpid for tpid, _ in tags] + [ethertype]
    out = dst + src + struct.pack("!H", types[0])
    for (_, tci), inner in zip(tags, types[1:]):
        out += struct.pack("!HH", tci, inner)
    return out + payload


# -- IPv6 ---------------------------------------------------------------------


def ipv6_header(saddr: bytes, daddr: bytes, nexthdr: int, payload_len: int, *, tclass: int = 0,
                label: int = 0, hop_limit: int = 64, version: int = 6) -> bytes:
    first = (version & 0xF) << 28 | (tclass & 0xFF) << 20 | (label & LABEL_MASK)
    return struct.pack("!IHBB", first, payload_len, nexthdr, hop_limit) + saddr + daddr


@dataclass(frozen=True)
class Ext:
    """One IPv6 extension header. ``hdrlen`` is the header's own length field."""

    kind: int
    hdrlen: int = 0
    frag_offset: int = 0  # fragment header: offset in 8-byte units
    more: bool = False  # fragment header: M flag

    def size(self) -> int:
        if self.kind == IPPROTO_FRAGMENT:
            return 8
        if self.kind == IPPROTO_AH:
            return (self.hdrlen + 2) * 4
        return (self.hdrlen + 1) * 8

    def build(self, nexthdr: int) -> bytes:
        if self.kind == IPPROTO_FRAGMENT:
            return struct.pack("!BBHI", nexthdr, 0, (self.frag_offset & 0x1FFF) << 3 | self.more,
                               0x12345678)
        if self.kind == IPPROTO_AH:
            body = struct.pack("!HII", 0, 0x1000, 1) + b"\xa5" * self.size()  # reserved, SPI, seq, ICV
            return (bytes([nexthdr, self.hdrlen]) + body)[:self.size()]
        if self.kind == IPPROTO_ROUTING:
            # type 0 style: routing type, segments left, then zeroed addresses
            return bytes([nexthdr, self.hdrlen, 0, 0]) + bytes(self.size() - 4)
        # hop-by-hop and destination options: Pad1/PadN options fill the rest
        options, left = b"", self.size() - 2
        while left:
            n = min(left - 2, 255)
            options += bytes([1, n]) + bytes(n) if n >= 0 else b"\x00"
            left -= n + 2 if n >= 0 else 1
        return bytes([nexthdr, self.hdrlen]) + options


def tcp(sport: int, dport: int, payload: bytes = b"", *, flags: int = 0x18, options: bytes = b"") -> bytes:
    doff = (TCP_HLEN + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 2, doff << 4, flags, 0xFFFF, 0, 0) + options + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, UDP_HLEN + len(payload), 0) + payload


def ipv6(saddr: bytes, daddr: bytes, proto: int, transport: bytes, *, exts: Sequence[Ext] = (),
         tclass: int = 0, label: int = 0, version: int = 6) -> bytes:
    """An IPv6 packet: header, extension headers in order, then ``transport``."""
    kinds = [e.kind for e in exts] + [proto]
    chain = b"".join(e.build(nxt) for e, nxt in zip(exts, kinds[1:]))
    body = chain + transport
    return ipv6_header(saddr, daddr, kinds[0], len(body), tclass=tclass, label=label,
                       version=version) + body


def ipv4(saddr: bytes, daddr: bytes, proto: int, transport: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(transport), 1, 0x4000, 64, proto, 0,
                       saddr, daddr) + transport


def l3_saddr(base: bytes) -> bytes:
    """``base`` with bytes 4-5 set to 0x86dd.

    BPF_PROG_TEST_RUN sets skb->protocol from bytes 12-13 of the input as if it
    were Ethernet; in a bare IPv6 packet those are source address bytes 4-5.
    """
    return base[:4] + struct.pack("!H", ETH_P_IPV6) + base[6:]


# -- expectations -------------------------------------------------------------


def with_label(frame: bytes, ip6_offset: int, label: int) -> bytes:
    """``frame`` with the 20 label bits of the IPv6 header at ``ip6_offset`` set to ``label``."""
    (first,) = struct.unpack_from("!I", frame, ip6_offset)
    first = (first & ~LABEL_MASK & 0xFFFFFFFF) | (label & LABEL_MASK)
    return frame[:ip6_offset] + struct.pack("!I", first) + frame[ip6_offset + 4:]


#: The largest input BPF_PROG_TEST_RUN takes into the linear data: a page less skb head- and
#: tailroom (x86-64). Kernels up to 6.18 refuse anything longer; 7.3 puts the rest in page
#: fragments, so that the packet is non-linear.
MAX_TEST_RUN_LEN = 3712


def flow_frame(key: FlowKey, *, l3: bool = False) -> bytes:
    """A minimal packet of the flow ``key``: TCP or UDP in IPv6, behind Ethernet unless ``l3``."""
    transport = tcp(key.sport, key.dport) if key.proto == IPPROTO_TCP else udp(key.sport, key.dport)
    packet = ipv6(key.saddr, key.daddr, key.proto, transport)
    return packet if l3 else ethernet(packet)


def kernel_refuses(data: bytes) -> bool | None:
    """Whether BPF_PROG_TEST_RUN rejects ``data`` (EINVAL) before the program runs.

    It needs an Ethernet header, and for an IPv4 or IPv6 ethertype at bytes
    12-13 also the IP header behind it. Data longer than MAX_TEST_RUN_LEN gives
    None: refused or run non-linear, depending on the kernel.
    """
    if len(data) < ETH_HLEN:
        return True
    if len(data) > MAX_TEST_RUN_LEN:
        return None
    ethertype = struct.unpack_from("!H", data, 12)[0]
    if ethertype == ETH_P_IPV6:
        return len(data) < ETH_HLEN + IPV6_HLEN
    if ethertype == ETH_P_IP:
        return len(data) < ETH_HLEN + 20
    return False


class FlowKey(NamedTuple):
    proto: int
    saddr: bytes
    daddr: bytes
    sport: int
    dport: int


class Verdict(NamedTuple):
    """What the classifier should make of a frame."""

    outcome: str  # "non_ipv6", "unparsed" or "flow"
    key: FlowKey | None = None
    ip6_offset: int | None = None


NON_IPV6 = Verdict("non_ipv6")
UNPARSED = Verdict("unparsed")


def classify(data: bytes, *, l3: bool = False) -> Verdict:
    """The reference model of the classifier's parser.

    ``skb->protocol`` is taken from bytes 12-13, as BPF_PROG_TEST_RUN sets it.
    """
    if len(data) < ETH_HLEN:
        return NON_IPV6
    protocol = struct.unpack_from("!H", data, 12)[0]
    if l3:
        if protocol != ETH_P_IPV6:
            return NON_IPV6
        off = 0
    else:
        if protocol != ETH_P_IPV6 and protocol not in VLAN_TPIDS:
            return NON_IPV6
        ethertype, off = protocol, ETH_HLEN
        for _ in range(MAX_VLAN_TAGS):
            if ethertype not in VLAN_TPIDS:
                break
            if len(data) < off + 4:
                return NON_IPV6
            ethertype = struct.unpack_from("!H", data, off + 2)[0]
            off += 4
        if ethertype != ETH_P_IPV6:
            return NON_IPV6

    ip6 = off
    if len(data) < ip6 + IPV6_HLEN or data[ip6] >> 4 != 6:
        return UNPARSED
    nexthdr = data[ip6 + 6]
    saddr, daddr = data[ip6 + 8:ip6 + 24], data[ip6 + 24:ip6 + 40]
    off = ip6 + IPV6_HLEN

    if nexthdr not in (IPPROTO_TCP, IPPROTO_UDP):
        for _ in range(MAX_EXT_HDRS):
            if nexthdr == IPPROTO_FRAGMENT:
                if len(data) < off + 8:
                    return UNPARSED
                if struct.unpack_from("!H", data, off + 2)[0] >> 3:
                    return UNPARSED  # not the first fragment: no ports
                nexthdr, off = data[off], off + 8
            elif nexthdr in (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, IPPROTO_AH):
                if len(data) < off + 2:
                    return UNPARSED
                hdrlen = data[off + 1]
                size = (hdrlen + 2) * 4 if nexthdr == IPPROTO_AH else (hdrlen + 1) * 8
                nexthdr, off = data[off], off + size
            else:
                return UNPARSED  # ESP, no next header, anything unknown
            if nexthdr in (IPPROTO_TCP, IPPROTO_UDP):
                break
        else:
            return UNPARSED  # more extension headers than the classifier walks

    need = TCP_HLEN if nexthdr == IPPROTO_TCP else UDP_HLEN
    if len(data) < off + need:
        return UNPARSED
    sport, dport = struct.unpack_from("!HH", data, off)
    return Verdict("flow", FlowKey(nexthdr, saddr, daddr, sport, dport), ip6)
