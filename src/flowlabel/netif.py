"""What the host's network interfaces look like, read over netlink (pyroute2).

Everything here reads the network namespace the calling thread is in; pyroute2
is imported on first use so that commands that never touch interfaces start
fast. pyroute2's synchronous API runs an event loop of its own and refuses to
run inside one, so from a thread with a running asyncio loop (the daemon's)
each query runs in a short-lived thread of the same network namespace.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import importlib.util
import ipaddress
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, NamedTuple, TypeVar

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
# Parents of the filters on a clsact qdisc's hooks (TC_H_CLSACT with TC_H_MIN_INGRESS/EGRESS).
CLSACT_INGRESS = 0xFFFFFFF2
CLSACT_EGRESS = 0xFFFFFFF3
T = TypeVar("T")


class Link(NamedTuple):
    name: str
    ifindex: int
    link_type: int

    @property
    def l3(self) -> bool:
        """True when packets on this device carry no link-layer header."""
        return self.link_type in L3_LINK_TYPES


def _pyroute2() -> None:
    """Make ``import pyroute2.x.y`` load only what it names.

    pyroute2's package __init__ imports every protocol it speaks (NDB, nl80211,
    IPVS, plan 9, ...), about 6 MB of a daemon that needs two sockets of it. The
    package is registered without running its __init__, which runs on the first
    use of a name from the package itself, so other users see pyroute2 as usual.
    """
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None:
        return  # not installed: the import that follows says so
    package = importlib.util.module_from_spec(spec)

    def complete(name: str) -> Any:
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:
            return importlib.import_module(f"pyroute2.{name}")  # a submodule: no need for the rest
        del package.__getattr__
        spec.loader.exec_module(package)  # type: ignore[union-attr]
        return getattr(package, name)

    package.__getattr__ = complete  # type: ignore[method-assign]
    sys.modules["pyroute2"] = package


def _iproute() -> Any:
    _pyroute2()
    from pyroute2.iproute.linux import IPRoute

    return IPRoute()


def _outside_event_loop(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn`` in a helper thread when the caller's thread runs an asyncio loop."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args, **kwargs)
        netns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        result: list[T] = []
        error: list[BaseException] = []

        def work() -> None:
            try:
                # A new thread starts in the process's namespace, which may not be the
                # caller's; only then move it (setns needs CAP_SYS_ADMIN).
                if os.stat("/proc/thread-self/ns/net").st_ino != os.fstat(netns).st_ino:
                    enter_netns(netns)
                result.append(fn(*args, **kwargs))
            except BaseException as exc:
                error.append(exc)

        try:
            thread = threading.Thread(target=work, name="flowlabel-netlink")
            thread.start()
            thread.join()
        finally:
            os.close(netns)
        if error:
            raise error[0]
        return result[0]

    return wrapper


def enter_netns(fd: int) -> None:
    """Move the calling thread into the network namespace ``fd`` refers to."""
    clone_newnet = 0x40000000
    if hasattr(os, "setns"):
        os.setns(fd, clone_newnet)
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, clone_newnet) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


@_outside_event_loop
def link(name: str) -> Link:
    """The interface called ``name``; InterfaceError if there is none."""
    with _iproute() as ipr:
        found = ipr.get_links(ifname=name) if name else []
    if not found:
        raise InterfaceError(f"network interface {name!r} does not exist")
    msg = found[0]
    return Link(name, int(msg["index"]), int(msg["ifi_type"]))


@_outside_event_loop
def links() -> list[Link]:
    with _iproute() as ipr:
        return [Link(_attr(msg, "IFLA_IFNAME"), int(msg["index"]), int(msg["ifi_type"]))
                for msg in ipr.get_links()]


@_outside_event_loop
def local_addresses() -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address assigned to an interface of this namespace."""
    with _iproute() as ipr:
        return frozenset(ipaddress.ip_address(_attr(msg, "IFA_ADDRESS").split("%")[0])
                         for msg in ipr.get_addr() if _attr(msg, "IFA_ADDRESS"))


@_outside_event_loop
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


# TCP states of a socket that still carries its connection: all but LISTEN, CLOSE and TIME_WAIT.
_OPEN_TCP_STATES = sum(1 << state for state in (1, 2, 3, 4, 5, 8, 9, 11))


@_outside_event_loop
def open_tcp_sockets() -> set[tuple[bytes, bytes, int, int]]:
    """(local address, remote address, local port, remote port) of every open IPv6 TCP socket.

    Read with sock_diag; the addresses are 16 bytes, the ports numbers.
    """
    _pyroute2()
    from pyroute2.netlink.diag import DiagSocket

    with DiagSocket() as diag:
        diag.bind()
        found = diag.get_sock_stats(family=AF_INET6, states=_OPEN_TCP_STATES)
    pton = socket.inet_pton
    return {(pton(AF_INET6, msg["idiag_src"]), pton(AF_INET6, msg["idiag_dst"]), int(msg["idiag_sport"]),
             int(msg["idiag_dport"])) for msg in found}


@_outside_event_loop
def clsact_has_filters(ifindex: int) -> bool:
    """Whether any filter sits on the interface's clsact hooks (ingress or egress)."""
    with _iproute() as ipr:
        for parent in (CLSACT_INGRESS, CLSACT_EGRESS):
            try:
                if ipr.get_filters(index=ifindex, parent=parent):
                    return True
            except Exception:  # no such hook, or the interface is gone
                continue
    return False


@_outside_event_loop
def egress_filter_program(ifindex: int, handle: int, priority: int) -> str | None:
    """The program name of the cls_bpf filter at (handle, priority) on the clsact egress hook.

    None if no filter is there, "" if it is not a named BPF program. The name comes
    from the netlink filter dump (TCA_BPF_NAME, ``name:[id]`` when libbpf attached
    it), which needs no capability.
    """
    _pyroute2()
    from pyroute2.netlink.exceptions import NetlinkError

    with _iproute() as ipr:
        try:
            filters = ipr.get_filters(index=ifindex, parent=CLSACT_EGRESS)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                raise InterfaceError(f"network interface {ifindex} does not exist") from exc
            raise InterfaceError(
                f"cannot list the egress filters of interface {ifindex}: {os.strerror(exc.code)}"
            ) from exc
    for msg in filters:
        if msg["handle"] == handle and msg["info"] >> 16 == priority:
            options = msg.get_attr("TCA_OPTIONS") if msg.get_attr("TCA_KIND") == "bpf" else None
            name = options.get_attr("TCA_BPF_NAME") if options else None
            return str(name).split(":[")[0] if name else ""
    return None


class NetnsHome:
    """The network namespace a Marker was made in, to return to for netlink work.

    Interface names, indexes and addresses are per namespace, and a thread can
    change namespace; the Marker's own interface and address look-ups always
    happen in its home namespace.
    """

    def __init__(self) -> None:
        self.fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.inode = os.fstat(self.fd).st_ino

    @contextmanager
    def entered(self) -> Iterator[None]:
        if os.stat("/proc/thread-self/ns/net").st_ino == self.inode:
            yield
            return
        current = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            enter_netns(self.fd)
            try:
                yield
            finally:
                enter_netns(current)
        finally:
            os.close(current)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
