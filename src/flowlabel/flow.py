"""The 5-tuple that identifies a transfer's packets."""

from __future__ import annotations

import ipaddress
from socket import AF_INET6, inet_ntop
from typing import NamedTuple, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

PROTOCOLS = ("tcp", "udp")


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
    # inet_ntop is about ten times faster than str() of an ipaddress object.
    if value.version == 6:
        return inet_ntop(AF_INET6, value.packed)
    return str(value)
