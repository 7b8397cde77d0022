"""The direct writer on real datagrams: one that is shared is written by the helper, never by
the store whose prologue would unshare it (and drop it if memory ran out).

A socket that asks for send timestamps at the scheduler (SO_TIMESTAMPING with
SOF_TIMESTAMPING_TX_SCHED) has each of its datagrams cloned before the tc egress hook, for
the timestamp it gets back: at the classifier every one of them is shared. A probe takes the
store's place in the writer's array and flips PROBE_BITS of the label of what it is given.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest

from flowlabel.bpf.attach import Attachment
from flowlabel.bpf.program import Program
from flowlabel.netif import link
from support.kernel import attach_modes, needs_direct_writer
from support.netns import A, B, Capture, Pair
from support.probe import PROBE_BITS, compile_probe, put_in_slot

pytestmark = [pytest.mark.netns, needs_direct_writer]

LABEL = 0x5C175
PORT = 5000
COUNT = 40
SO_TIMESTAMPING = 37
SOF_TIMESTAMPING_TX_SCHED = 1 << 8
SOF_TIMESTAMPING_SOFTWARE = 1 << 4


def timestamps(sock: socket.socket) -> int:
    """The send timestamps waiting on ``sock``'s error queue, each with its clone of a datagram."""
    count = 0
    while True:
        try:
            sock.recvmsg(2048, 1024, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return count
        count += 1


@attach_modes
def test_a_shared_datagram_is_written_by_the_helper(tmp_path: Path, mode: str) -> None:
    tcx = mode == "tcx"
    with Pair() as pair, Program(tcx=tcx) as marker, \
            Program(compile_probe(tmp_path), program="probe", tcx=tcx) as probe:
        assert marker.writer is not None, marker.writer_missing
        assert marker.flows is not None
        put_in_slot(marker.writer.stores_fd, probe.prog_fd)
        with pair.b.entered():
            capture = Capture(pair.if_b)
        with pair.a.entered():
            attachment = Attachment(link(pair.if_a), marker, mode, remove_qdisc=True)
            plain, stamped = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM), \
                socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            stamped.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING,
                               SOF_TIMESTAMPING_TX_SCHED | SOF_TIMESTAMPING_SOFTWARE)
            src, dst = ipaddress.ip_address(A).packed, ipaddress.ip_address(B).packed
            for sock in (plain, stamped):
                sock.bind((A, 0))
                key = marker.flows.key(socket.IPPROTO_UDP, src, dst, sock.getsockname()[1], PORT)
                marker.flows.put(key, LABEL)
            for _ in range(COUNT):
                for sock in (plain, stamped):
                    sock.sendto(b"x" * 100, (B, PORT))
            capture.drain()
            assert timestamps(stamped) == COUNT  # so each of its datagrams was cloned on its way out
            plain_labels = [p.label for p in capture.of(plain.getsockname()[1], PORT)]
            stamped_labels = [p.label for p in capture.of(stamped.getsockname()[1], PORT)]
            # Every datagram arrived; those not shared went to the store, the shared ones did not.
            assert plain_labels == [LABEL ^ PROBE_BITS] * COUNT
            assert stamped_labels == [LABEL] * COUNT
        finally:
            plain.close()
            stamped.close()
            capture.close()
            attachment.detach()
