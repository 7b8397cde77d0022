"""The loader on real interfaces: packets sent by real sockets, captured on the wire.

Each test builds its own network namespaces: ``a`` (fd00::1) runs the Marker,
``b`` (fd00::2) receives and captures with AF_PACKET.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from flowlabel.errors import AttachConflictError, InterfaceError, MapFullError, ObjectError
from flowlabel.flow import Flow, flow_key
from flowlabel.marker import TC_HANDLE, TC_PRIORITY, Marker, tcx_program_names
from support.kernel import attach_modes
from support.netns import A, B, Capture, Namespace, Pair, parse_ipv6, unique
from support.privilege import as_the_unit

pytestmark = pytest.mark.netns

LABEL = 0xABCDE


def tcp_transfer(pair: Pair, marker: Marker | None, nbytes: int, label: int | None) -> tuple[int, int]:
    """One TCP connection a -> b sending nbytes; marked (as seen from b's side) when label is given."""
    with pair.b.entered():
        server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        server.bind((B, 0))
        server.listen(1)
    with pair.a.entered():
        client = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        client.bind((A, 0))
    sport, dport = client.getsockname()[1], server.getsockname()[1]
    if marker is not None and label is not None:
        # Described from the receiver's side: the Marker must turn it around.
        marker.add(Flow.of("tcp", B, A, dport, sport), label)
    received = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(1 << 20):
                received.append(len(chunk))

    thread = threading.Thread(target=serve)
    thread.start()
    client.connect((B, dport))
    client.sendall(b"x" * nbytes)
    client.close()
    thread.join(10)
    server.close()
    assert sum(received) == nbytes
    return sport, dport


def udp_send(pair: Pair, count: int, size: int = 200) -> tuple[int, int, socket.socket]:
    with pair.b.entered():
        server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        server.bind((B, 0))
    with pair.a.entered():
        client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        client.bind((A, 0))
    for _ in range(count):
        client.sendto(b"u" * size, (B, server.getsockname()[1]))
    sport = client.getsockname()[1]
    client.close()
    return sport, server.getsockname()[1], server


def capture_on_b(pair: Pair) -> Capture:
    with pair.b.entered():
        return Capture(pair.if_b)


@attach_modes
def test_marks_exactly_the_flows_in_the_map(pair: Pair, mode: str) -> None:
    cap = capture_on_b(pair)
    with pair.a.entered():
        marker = Marker([pair.if_a], attach=mode)
    try:
        assert marker.attachment_modes() == {pair.if_a: mode}
        marked = tcp_transfer(pair, marker, 4 << 20, LABEL)
        unmarked = tcp_transfer(pair, marker, 1 << 20, None)
        udp_flow = udp_send(pair, 0)
        marker.add(Flow.of("udp", A, B, udp_flow[0], udp_flow[1]), LABEL ^ 1)
        with pair.a.entered():
            client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            client.bind((A, udp_flow[0]))
            for _ in range(20):
                client.sendto(b"u" * 300, (B, udp_flow[1]))
        cap.drain()

        tcp_marked = cap.of(*marked)
        assert len(tcp_marked) > 10
        assert {p.label for p in tcp_marked} == {LABEL}
        # Large writes leave as GSO packets; one write of the label covers them.
        assert max(p.length for p in tcp_marked) > 1500
        assert {p.label for p in cap.of(*unmarked)} == {0}
        assert {p.label for p in cap.of(*udp_flow[:2])} == {LABEL ^ 1}
        assert len(cap.of(*udp_flow[:2])) == 20
        counters = marker.counters()
        assert counters["marked"] >= len(tcp_marked) + 20
        assert counters["missed"] > 0  # the unmarked connection

        # Removed: the same UDP flow leaves unmarked again.
        assert marker.remove(Flow.of("udp", A, B, udp_flow[0], udp_flow[1]))
        cap.packets.clear()
        for _ in range(5):
            client.sendto(b"u" * 300, (B, udp_flow[1]))
        cap.drain()
        assert [p.label for p in cap.of(*udp_flow[:2])] == [0] * 5
        client.close()
        udp_flow[2].close()
    finally:
        with pair.a.entered():
            marker.close()
        cap.close()


@attach_modes
def test_close_leaves_nothing_behind(pair: Pair, mode: str) -> None:
    with pair.a.entered():
        before = pair.a.run("tc", "qdisc", "show", "dev", pair.if_a).stdout
        marker = Marker([pair.if_a], attach=mode, remove_qdisc=True)
        ifindex = socket.if_nametoindex(pair.if_a)
        if mode == "tcx":
            assert tcx_program_names(ifindex) == ["marker_egress"]
        else:
            assert "clsact" in pair.a.run("tc", "qdisc", "show", "dev", pair.if_a).stdout
        marker.close()
        marker.close()  # idempotent
        assert tcx_program_names(ifindex) == []
        assert _egress_filters(pair.a, pair.if_a) == []
        assert pair.a.run("tc", "qdisc", "show", "dev", pair.if_a).stdout == before


def _egress_filters(ns: Namespace, ifname: str) -> list[dict[str, object]]:
    """Egress filters read over netlink (pyroute2), not from the Marker's own state."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with ns.entered(), IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        try:
            found = ipr.get_filters(index=index, parent=0xFFFFFFF3)
        except NetlinkError as exc:
            if exc.code not in (errno.EINVAL, errno.ENOENT):
                raise
            return []  # no clsact qdisc at all
        return [{"handle": f["handle"], "priority": f["info"] >> 16, "kind": f.get_attr("TCA_KIND")}
                for f in found if f["handle"]]


def test_foreign_clsact_filter_survives(pair: Pair) -> None:
    pair.a.run("tc", "qdisc", "add", "dev", pair.if_a, "clsact")
    pair.a.run("tc", "filter", "add", "dev", pair.if_a, "egress", "prio", "7", "handle", "7",
               "bpf", "bytecode", "1,6 0 0 0,")
    foreign = _egress_filters(pair.a, pair.if_a)
    assert foreign == [{"handle": 7, "priority": 7, "kind": "bpf"}]
    with pair.a.entered():
        marker = Marker([pair.if_a], attach="tc", remove_qdisc=True)
    assert {"handle": TC_HANDLE, "priority": TC_PRIORITY, "kind": "bpf"} in _egress_filters(pair.a, pair.if_a)
    with pair.a.entered():
        marker.close()
    assert _egress_filters(pair.a, pair.if_a) == foreign
    assert "clsact" in pair.a.run("tc", "qdisc", "show", "dev", pair.if_a).stdout


def test_qdisc_created_by_marker_is_kept_unless_asked(pair: Pair) -> None:
    with pair.a.entered():
        Marker([pair.if_a], attach="tc").close()
    assert "clsact" in pair.a.run("tc", "qdisc", "show", "dev", pair.if_a).stdout
    assert _egress_filters(pair.a, pair.if_a) == []


HOLDER = """
import sys, time
from flowlabel.marker import Marker
from flowlabel.flow import Flow, flow_key
m = Marker([sys.argv[1]], attach=sys.argv[2])
m.add(Flow.of("udp", "fd00::1", "fd00::2", int(sys.argv[3]), 5000), int(sys.argv[4], 16))
print("ready", flush=True)
time.sleep(60)
"""


def hold(pair: Pair, mode: str, sport: int, label: int,
         prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    """A Marker in a process of its own in namespace a, marking one UDP flow from ``sport``."""
    holder = subprocess.Popen(["ip", "netns", "exec", pair.a.name, *prefix, sys.executable, "-c", HOLDER,
                               pair.if_a, mode, str(sport), hex(label)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    if holder.stdout.readline().strip() != "ready":
        holder.kill()
        pytest.fail(f"the Marker process failed: {holder.communicate()[1]}")
    return holder


@attach_modes
def test_sigkill_then_next_marker_with_the_units_privileges(pair: Pair, mode: str) -> None:
    first = hold(pair, mode, 4000, 0x11111)
    first.kill()
    first.wait()
    ifindex = int(pair.a.run("cat", f"/sys/class/net/{pair.if_a}/ifindex").stdout)
    with pair.a.entered():
        if mode == "tcx":
            assert tcx_program_names(ifindex) == []  # the link died with its process
        else:
            # The filter outlives the process; the next Marker replaces it.
            assert len(_egress_filters(pair.a, pair.if_a)) == 1
    if mode == "tc":
        # Meanwhile it marks on. With no process holding them, the kernel empties the program
        # arrays (the direct writer's) in the background; the classifier then writes itself.
        orphaned = capture_on_b(pair)
        with pair.a.entered():
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.bind((A, 4000))
            for _ in range(20):
                s.sendto(b"x" * 100, (B, 5000))
                time.sleep(0.05)
            s.close()
        assert [p.label for p in orphaned.drain() if p.sport == 4000] == [0x11111] * 20, orphaned.packets
        orphaned.close()
    # Without CAP_SYS_ADMIN the next Marker cannot read a program by its id, and needs not.
    cap = capture_on_b(pair)
    second = hold(pair, mode, 4001, 0x22222, prefix=as_the_unit())
    try:
        ours = {"handle": TC_HANDLE, "priority": TC_PRIORITY, "kind": "bpf"}
        assert _egress_filters(pair.a, pair.if_a) == ([ours] if mode == "tc" else [])
        with pair.a.entered():
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.bind((A, 4001))
            s.sendto(b"x", (B, 5000))
            s.close()
        assert [p.label for p in cap.drain() if p.sport == 4001] == [0x22222], cap.packets
    finally:
        second.kill()
        second.wait()
        cap.close()


def test_second_marker_on_same_interface_is_refused(pair: Pair) -> None:
    with pair.a.entered():
        first = Marker([pair.if_a])
        try:
            with pytest.raises(AttachConflictError, match="another flowlabel marker"):
                Marker([pair.if_a])
        finally:
            first.close()
        Marker([pair.if_a]).close()  # free again once the first has closed


def test_tun_device_l3_mode(pair: Pair) -> None:
    import fcntl

    name = unique("tun")
    with pair.a.entered():
        tun = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        # TUNSETIFF with IFF_TUN | IFF_NO_PI: raw IPv6 packets, no link-layer header.
        fcntl.ioctl(tun, 0x400454CA, struct.pack("16sH", name.encode(), 0x0001 | 0x1000))
    try:
        pair.a.ip("addr", "add", "fd01::1/64", "dev", name, "nodad")
        pair.a.ip("link", "set", name, "up")
        with pair.a.entered():
            marker = Marker([name])
            try:
                marker.add(Flow.of("udp", "fd01::1", "fd01::2", 4100, 5100), 0x5A5A5)
                s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                s.bind(("fd01::1", 4100))
                s.sendto(b"marked", ("fd01::2", 5100))
                s.sendto(b"marked", ("fd01::2", 5100))
                s.close()
                s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                s.sendto(b"other", ("fd01::2", 5101))
                s.close()
                packets = _read_tun(tun)
            finally:
                marker.close()
    finally:
        os.close(tun)
    by_port = {}
    for p in packets:
        by_port.setdefault(p.dport, []).append(p.label)
    assert by_port[5100] == [0x5A5A5, 0x5A5A5]
    assert by_port[5101] == [0]


def _read_tun(fd: int) -> list:
    import select

    packets = []
    while select.select([fd], [], [], 0.5)[0]:
        p = parse_ipv6(os.read(fd, 65536), l2=False)
        if p is not None and p.protocol == 17:
            packets.append(p)
    return packets


def test_loopback_in_fresh_namespace() -> None:
    with Namespace() as ns, ns.entered():
        cap = Capture("lo", outgoing_only=True)
        marker = Marker(["lo"])
        try:
            server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            server.bind(("::1", 0))
            client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            client.bind(("::1", 0))
            flow = Flow.of("udp", "::1", "::1", client.getsockname()[1], server.getsockname()[1])
            marker.add(flow, 0x0F0F0)
            client.sendto(b"m", ("::1", flow.dport))
            reply_port = server.getsockname()[1]
            server.sendto(b"r", ("::1", flow.sport))
            cap.drain()
            assert [p.label for p in cap.of(flow.sport, flow.dport)] == [0x0F0F0]
            assert [p.label for p in cap.of(reply_port, flow.sport)] == [0]
            client.close()
            server.close()
        finally:
            marker.close()
            cap.close()


def test_errors_are_clear(pair: Pair, tmp_path) -> None:
    with pair.a.entered():
        with pytest.raises(InterfaceError, match="'nosuchif0' does not exist"):
            Marker(["nosuchif0"])
        with pytest.raises(ObjectError, match="does not exist"):
            Marker([pair.if_a], program_path=tmp_path / "missing.o")
        junk = tmp_path / "junk.o"
        junk.write_bytes(b"\x7fELF" + b"\0" * 60)
        with pytest.raises(ObjectError, match=r"junk\.o"):
            Marker([pair.if_a], program_path=junk)
        with pytest.raises(ValueError, match="attach mode"):
            Marker([pair.if_a], attach="xdp")
        for bad in ("10", 10.5, True):
            with pytest.raises(TypeError, match="max_flows must be an int"):
                Marker([pair.if_a], max_flows=bad)  # type: ignore[arg-type]
        marker = Marker(pair.if_a, max_flows=4)  # one name given as a string is that interface
        try:
            assert set(marker.interfaces) == {pair.if_a}
            with pytest.raises(ValueError, match="IPv4"):
                marker.add(Flow.of("tcp", "10.0.0.1", "10.0.0.2", 1, 2), 1)
            with pytest.raises(ValueError, match="20 bits"):
                marker.add(Flow.of("tcp", A, B, 1, 2), 1 << 20)
            for label in ("5", None, 1.5, True):
                with pytest.raises(TypeError, match="a flow label is an int"):
                    marker.add(Flow.of("tcp", A, B, 1, 2), label)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=r"Flow\.of"):
                marker.add(("tcp", A, B, 1, 2), 5)  # type: ignore[arg-type]
            good = flow_key(Flow.of("tcp", A, B, 1, 2))
            for key in (b"abc", good + b"x", good[:-1] + b"\1", good[:36] + b"\x01" + good[37:]):
                with pytest.raises(ValueError, match="not a packed flow key"):
                    marker.add_key(key, 5)
                with pytest.raises(ValueError, match="not a packed flow key"):
                    marker.add_many_keys([(key, 5)])
                with pytest.raises(ValueError, match="not a packed flow key"):
                    marker.remove_key(key)
            assert list(marker) == []  # nothing of the bad calls reached the map
            for port in range(4):
                marker.add(Flow.of("tcp", A, B, 1000 + port, 80), port)
            marker.add(Flow.of("tcp", A, B, 1000, 80), 9)  # a refresh needs no room
            with pytest.raises(MapFullError, match="full"):
                marker.add(Flow.of("tcp", A, B, 2000, 80), 1)
            assert marker.remove(Flow.of("tcp", A, B, 1001, 80))
            marker.add(Flow.of("tcp", A, B, 2000, 80), 1)
        finally:
            marker.close()


def test_flow_management(pair: Pair) -> None:
    with pair.a.entered():
        marker = Marker([pair.if_a])
    try:
        local = Flow.of("tcp", A, B, 1111, 2222)
        remote_view = Flow.of("tcp", B, A, 3333, 4444)   # oriented to a -> b
        foreign = Flow.of("udp", "fd99::1", "fd99::2", 5, 6)  # neither end local: both ways
        marker.add(local, 1)
        marker.add(remote_view, 2)
        marker.add(foreign, 3)
        assert len(marker) == 4
        entries = dict(marker)
        assert entries == {local: 1, remote_view.reversed(): 2, foreign: 3, foreign.reversed(): 3}
        assert marker.get(remote_view) == 2 and marker.get(remote_view.reversed()) == 2
        assert marker.get(Flow.of("tcp", A, B, 1, 1)) is None
        assert marker.remove(foreign) and len(marker) == 2
        assert not marker.remove(foreign)
        written = marker.add_many((Flow.of("udp", A, B, p, 53), p) for p in range(1, 1001))
        assert written == 1000 and len(marker) == 1002
        assert marker.get(Flow.of("udp", A, B, 500, 53)) == 500
        marker.clear()
        assert len(marker) == 0 and list(marker) == []
    finally:
        with pair.a.entered():
            marker.close()
