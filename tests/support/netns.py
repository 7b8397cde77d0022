"""Network namespaces, veth pairs and packet capture for end-to-end tests.

Everything is created with iproute2's ``ip`` and removed again; sockets are
opened inside a namespace by entering it for the duration of a ``with`` block
(network namespaces are per thread, and a socket stays in the namespace it was
created in).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import socket
import struct
import subprocess
import time
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from flowlabel.netif import enter_netns

ETH_P_ALL = 0x0003
ETH_P_IPV6 = 0x86DD
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; needs CAP_NET_ADMIN
_counter = itertools.count()


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check)


def unique(prefix: str) -> str:
    """A name unique to this process and call, short enough for an interface."""
    return f"{prefix}{os.getpid() % 10000}{next(_counter)}"


class Namespace:
    """A named network namespace with its loopback up; deleted on close."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or unique("fl")
        sh("ip", "netns", "add", self.name)
        self.ip("link", "set", "lo", "up")
        # Unmarked packets then carry label 0, so any other value is the marker's doing;
        # without DAD, link-local addresses work at once and neighbour discovery is quick;
        # without router solicitations, a link falls quiet about a second after it comes
        # up (the MLD reports), so packet counts cover the test's traffic only.
        self.run("sysctl", "-qw", "net.ipv6.auto_flowlabels=0", "net.ipv6.conf.all.accept_dad=0",
                 "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.default.router_solicitations=0")

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "-n", self.name, *args, check=check)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.name, *args, check=check)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block (this thread) inside the namespace."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            enter_netns(target)
            yield
        finally:
            enter_netns(home)
            os.close(target)
            os.close(home)

    def close(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: A command prefix for ``ip netns exec``, which mounts a /sys of the namespace's own without the
#: cgroup v2 hierarchy a host has at /sys/fs/cgroup: mounted there again (the same hierarchy), the
#: daemon can watch sockets as it does on a host.
WITH_CGROUP2 = ("sh", "-c", 'mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null; exec "$@"', "sh")

#: The addresses of a Pair's two ends.
A, B = "fd00::1", "fd00::2"


def veth_pair(a: Namespace, b: Namespace, addr_a: str, addr_b: str,
              names: tuple[str, str] | None = None) -> tuple[str, str]:
    """A veth pair between two namespaces with IPv6 addresses (no DAD wait); returns the names."""
    name_a, name_b = names or (unique("va"), unique("vb"))
    sh("ip", "link", "add", name_a, "netns", a.name, "type", "veth", "peer", "name", name_b, "netns", b.name)
    for ns, name, addr in ((a, name_a, addr_a), (b, name_b, addr_b)):
        ns.ip("addr", "add", f"{addr}/64", "dev", name, "nodad")
        ns.ip("link", "set", name, "up")
    # Static neighbours: a first packet then leaves at once instead of waiting
    # for neighbour discovery on links that have only just come up.
    for ns, name, peer_ns, peer_name, peer_addr in ((a, name_a, b, name_b, addr_b),
                                                    (b, name_b, a, name_a, addr_a)):
        mac = json.loads(peer_ns.ip("-j", "link", "show", "dev", peer_name).stdout)[0]["address"]
        ns.ip("neigh", "replace", peer_addr, "lladdr", mac, "dev", name, "nud", "permanent")
    return name_a, name_b


class Pair:
    """Namespaces ``a`` (address A) and ``b`` (address B) joined by a veth pair."""

    def __init__(self) -> None:
        self.a = Namespace()
        try:
            self.b = Namespace()
            self.if_a, self.if_b = veth_pair(self.a, self.b, A, B)
        except BaseException:
            self.a.close()
            raise

    def delete_link(self) -> None:
        self.a.ip("link", "del", self.if_a)

    def add_link(self) -> None:
        """The veth pair again under its old names (new devices), after :meth:`delete_link`."""
        veth_pair(self.a, self.b, A, B, names=(self.if_a, self.if_b))

    def recreate_link(self) -> None:
        self.delete_link()
        self.add_link()

    def tcp_connection(self) -> TcpConnection:
        """A connected TCP pair: the client in a (address A), the accepted end in b (address B)."""
        with self.b.entered():
            server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        server.bind((B, 0))
        server.listen(1)
        with self.a.entered():
            client = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        client.settimeout(10)
        client.connect((B, server.getsockname()[1]))
        accepted, _ = server.accept()
        accepted.settimeout(10)
        return TcpConnection(client, accepted, server)

    def send_udp(self, flows: Iterable[tuple[int, int]], count: int = 3) -> None:
        """``count`` datagrams a -> b for each (sport, dport)."""
        with self.a.entered():
            for sport, dport in flows:
                with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((A, sport))
                    for _ in range(count):
                        s.sendto(b"flowlabel e2e", (B, dport))

    def tcp_labels(self, sport: int, dport: int, nbytes: int = 256 << 10) -> set[int]:
        """Labels of the packets of one TCP connection a -> b (handshake and data), seen on b."""
        return {p.label for p in self.tcp_packets(sport, dport, nbytes)}

    def tcp_packets(self, sport: int, dport: int, nbytes: int = 256 << 10) -> list[Packet]:
        """Every packet a -> b of one TCP connection, from its SYN, as captured on b."""
        with self.b.entered():
            capture = Capture(self.if_b)
            server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((B, dport))
            server.listen(1)
            with self.a.entered():
                client = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            with client:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                client.bind((A, sport))
                client.connect((B, dport))
                conn, _ = server.accept()
                with conn:
                    client.sendall(b"t" * nbytes)
                    client.shutdown(socket.SHUT_WR)
                    received = 0
                    while chunk := conn.recv(1 << 16):
                        received += len(chunk)
            assert received == nbytes
            capture.drain(quiet=0.2)
            return capture.of(sport, dport)
        finally:
            server.close()
            capture.close()

    def labels(self, flows: list[tuple[int, int]], count: int = 3) -> dict[tuple[int, int], set[int]]:
        """Send on each flow and return the labels seen on b's side, by (sport, dport)."""
        with self.b.entered():
            capture = Capture(self.if_b)
        try:
            self.send_udp(flows, count)
            capture.drain(quiet=0.2)
            return {flow: {p.label for p in capture.of(*flow)} for flow in flows}
        finally:
            capture.close()

    def close(self) -> None:
        self.a.close()
        self.b.close()

    def __enter__(self) -> Pair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TcpConnection(NamedTuple):
    """One TCP connection a -> b (:meth:`Pair.tcp_connection`); close it with :meth:`close`."""

    client: socket.socket
    accepted: socket.socket
    server: socket.socket

    @property
    def sport(self) -> int:
        port: int = self.client.getsockname()[1]
        return port

    @property
    def dport(self) -> int:
        port: int = self.server.getsockname()[1]
        return port

    def close(self) -> None:
        for sock in self:
            sock.close()


class Packet(NamedTuple):
    """What the tests look at in a captured IPv6 packet."""

    label: int
    traffic_class: int
    protocol: int
    src: str
    dst: str
    sport: int
    dport: int
    length: int
    tcp_flags: int = 0  # SYN is 0x02


def parse_ipv6(frame: bytes, l2: bool = True) -> Packet | None:
    """TCP/UDP over IPv6 (no extension headers: what local sockets send); None for anything else."""
    if l2:
        if len(frame) < 14 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IPV6:
            return None
        frame = frame[14:]
    if len(frame) < 44 or frame[0] >> 4 != 6 or frame[6] not in (6, 17):
        return None
    word = struct.unpack_from("!I", frame, 0)[0]
    sport, dport = struct.unpack_from("!HH", frame, 40)
    flags = frame[53] if frame[6] == 6 and len(frame) >= 54 else 0
    return Packet(word & 0xFFFFF, (word >> 20) & 0xFF, frame[6],
                  socket.inet_ntop(socket.AF_INET6, frame[8:24]),
                  socket.inet_ntop(socket.AF_INET6, frame[24:40]), sport, dport, len(frame), flags)


class Capture:
    """An AF_PACKET capture on one interface; open it inside the interface's namespace."""

    def __init__(self, ifname: str, outgoing_only: bool = False) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        # Forced past net.core.rmem_max (often 208 KiB), so that a burst is kept until drained.
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        self.sock.bind((ifname, 0))
        self.sock.setblocking(False)
        self.outgoing_only = outgoing_only
        self.packets: list[Packet] = []

    def drain(self, quiet: float = 0.3, limit: float = 5.0) -> list[Packet]:
        """Read until nothing arrives for ``quiet`` seconds; returns all packets seen so far."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.sock], [], [], quiet)
            if not ready:
                break
            while True:
                try:
                    frame, addr = self.sock.recvfrom(1 << 17)
                except BlockingIOError:
                    break
                if self.outgoing_only and addr[2] != socket.PACKET_OUTGOING:
                    continue
                packet = parse_ipv6(frame)
                if packet is not None:
                    self.packets.append(packet)
        return self.packets

    def of(self, sport: int, dport: int) -> list[Packet]:
        return [p for p in self.packets if (p.sport, p.dport) == (sport, dport)]

    def close(self) -> None:
        self.sock.close()
