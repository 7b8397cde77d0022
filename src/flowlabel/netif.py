"""What the host's network interfaces look like, read over netlink (pyroute2).

Everything here reads the network namespace the process is in; pyroute2 is
imported on first use so that commands that never touch interfaces start fast.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any, NamedTuple

from .errors import InterfaceError

# ARPHRD_* link types whose frames start at the IP header (linux/if_arp.h).
L3_LINK_TYPES = {
    512,    # PPP
    519,    # RAWIP
    768,    # TUNNEL (ipip)
    769,    # TUNNEL6 (ip6tnl)
    776,    # SIT
    778,    # IPGRE
    823,    # IP6GRE
    65534,  # NONE: tun, wireguard
}

AF_INET6 = socket.AF_INET6
RT_SCOPE_UNIVERSE = 0


class Link(NamedTuple):
    name: str
    ifindex: int
    link_type: int

    @property
    def l3(self) -> bool:
        """True when packets on this device carry no link-layer header."""
        return self.link_type in L3_LINK_TYPES


def _iproute() -> Any:
    from pyroute2 import IPRoute

    return IPRoute()


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


def link(name: str) -> Link:
    """The interface called ``name``; InterfaceError if there is none."""
    with _iproute() as ipr:
        found = ipr.get_links(ifname=name) if name else []
    if not found:
        raise InterfaceError(f"network interface {name!r} does not exist")
    msg = found[0]
    return Link(name, int(msg["index"]), int(msg["ifi_type"]))


def links() -> Iterator[Link]:
    with _iproute() as ipr:
        for msg in ipr.get_links():
            yield Link(_attr(msg, "IFLA_IFNAME"), int(msg["index"]), int(msg["ifi_type"]))


def local_addresses() -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address assigned to an interface of this namespace."""
    with _iproute() as ipr:
        return frozenset(ipaddress.ip_address(_attr(msg, "IFA_ADDRESS").split("%")[0])
                         for msg in ipr.get_addr() if _attr(msg, "IFA_ADDRESS"))


def discover_interfaces() -> list[str]:
    """Interfaces that carry IPv6 traffic off the host.

    Those with a global IPv6 address, plus the device of the IPv6 default route.
    """
    with _iproute() as ipr:
        names = {int(msg["index"]): _attr(msg, "IFLA_IFNAME") for msg in ipr.get_links()}
        chosen = {int(msg["index"]) for msg in ipr.get_addr(family=AF_INET6)
                  if msg["scope"] == RT_SCOPE_UNIVERSE}
        for route in ipr.get_default_routes(family=AF_INET6):
            oif = _attr(route, "RTA_OIF")
            if oif:
                chosen.add(int(oif))
    return sorted(names[i] for i in chosen if i in names and names[i] != "lo")
