"""The 5-tuple that identifies a transfer's packets."""

from __future__ import annotations

import ipaddress
import struct
from socket import AF_INET6, inet_ntop
from typing import NamedTuple, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

#: The transport protocols a flow can be, with their IP protocol numbers (FLOWLABEL_PROTO_* of
#: bpf/marker.h, which flowlabel.bpf.ext checks).
PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17}
PROTOCOLS = tuple(PROTOCOL_NUMBERS)


class PackedIPv6Address(ipaddress.IPv6Address):
    """An IPv6 address that keeps its 16 bytes.

    Every event's flow is packed into a map key; IPv6Address.packed rebuilds the
    bytes from an integer at each use, which was a tenth of an event's cost.
    """

    __slots__ = ("_packed",)

    def __init__(self, packed: bytes) -> None:
        super().__init__(packed)
        self._packed = bytes(packed)

    @property
    def packed(self) -> bytes:
        return self._packed

    def __repr__(self) -> str:
        return f"IPv6Address({str(self)!r})"


class Flow(NamedTuple):
    """A transport flow: protocol (``"tcp"`` or ``"udp"``), addresses and ports.

    ``src``/``sport`` are the sender of the packets the flow describes; the marker
    orients a flow to its egress direction before keying the classifier's map.
    """

    protocol: str
    src: IPAddress
    dst: IPAddress
    sport: int
    dport: int

    @classmethod
    def of(cls, protocol: str, src: str | IPAddress, dst: str | IPAddress, sport: int, dport: int) -> Flow:
        """Build a flow from loosely typed parts, validating each one."""
        if not isinstance(protocol, str):
            raise ValueError(f"protocol must be tcp or udp, not {protocol!r}")
        proto = protocol.lower()
        if proto not in PROTOCOLS:
            raise ValueError(f"protocol must be tcp or udp, not {protocol!r}")
        s = ipaddress.ip_address(src)
        d = ipaddress.ip_address(dst)
        if s.version != d.version:
            raise ValueError(f"addresses of different families: {s} and {d}")
        for name, port in (("sport", sport), ("dport", dport)):
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                raise ValueError(f"{name} must be an integer 0-65535, not {port!r}")
        return cls(proto, s, d, sport, dport)

    @property
    def is_ipv6(self) -> bool:
        return self.src.version == 6

    def reversed(self) -> Flow:
        """The same flow seen from the other end."""
        return Flow(self.protocol, self.dst, self.src, self.dport, self.sport)

    def __str__(self) -> str:
        return f"{self.protocol} [{self.src}]:{self.sport} -> [{self.dst}]:{self.dport}"


def address_text(value: IPAddress) -> str:
    """The address as text, as ``str()`` writes it."""
    return packed_text(value.packed) if value.version == 6 else str(value)


def packed_text(packed: bytes) -> str:
    """A packed IPv6 address (16 bytes) as text."""
    # inet_ntop is about ten times faster than str() of an ipaddress object.
    return inet_ntop(AF_INET6, packed)


# -- the flow as the classifier's map keys it ------------------------------------------------------

#: ``struct flow_key`` of bpf/marker.h: source and destination address, source and destination port
#: in network byte order, protocol, three bytes of zero padding. flowlabel.bpf.ext checks it against
#: the layout the extension was built from.
FLOW_KEY = struct.Struct(">16s16sHHB3x")
PROTOCOL_NAMES = {number: name for name, number in PROTOCOL_NUMBERS.items()}
# Where the fields are in a packed key.
_SRC, _DST, _PORTS, _PROTO = slice(0, 16), slice(16, 32), slice(32, 36), 36


def flow_key(flow: Flow) -> bytes:
    """The packed key of an IPv6 flow, oriented as given."""
    return FLOW_KEY.pack(flow.src.packed, flow.dst.packed, flow.sport, flow.dport,
                         PROTOCOL_NUMBERS[flow.protocol])


def reversed_key(key: bytes) -> bytes:
    """The key of the same flow seen from the other end."""
    return key[_DST] + key[_SRC] + key[34:36] + key[32:34] + key[_PROTO:]


def key_source(key: bytes) -> bytes:
    return key[_SRC]


def key_destination(key: bytes) -> bytes:
    return key[_DST]


def key_protocol(key: bytes) -> int:
    return key[_PROTO]


def flow_of_key(key: bytes) -> Flow:
    """The Flow a packed key stands for."""
    src, dst, sport, dport, proto = FLOW_KEY.unpack(key)
    return Flow(PROTOCOL_NAMES.get(proto, str(proto)), ipaddress.IPv6Address(src), ipaddress.IPv6Address(dst),
                sport, dport)
