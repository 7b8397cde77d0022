"""Which packets the classifier hands to its direct writer, and that nothing depends on it.

The classifier tail-calls the writer (bpf/writer.bpf.c) through its ``writers`` program
array for unicast UDP with no VLAN tag, and writes everything else with
bpf_skb_store_bytes. The writer stores through the packet pointer (its ``label_store``,
through its own ``stores`` array) packets that are not shared, and writes the rest with the
helper. To see which way a packet went, a probe program takes the place of either in its
array: it writes the word it is handed with PROBE_BITS of the label flipped.
BPF_PROG_TEST_RUN's packets are never shared; tests/netns/test_shared_packets.py sends shared ones.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import OBJECT, Classifier
from packets import (
    IPPROTO_HOPOPTS,
    IPPROTO_TCP,
    IPPROTO_UDP,
    TC_ACT_OK,
    Ext,
    FlowKey,
    addr,
    ethernet,
    ipv6,
    l3_saddr,
    tcp,
    udp,
)

from flowlabel.bpf.ext import extension
from flowlabel.bpf.writer import KFUNC, KFUNC_SINCE
from flowlabel.marker import Program
from support.kernel import HAS_DIRECT_WRITER, needs_direct_writer
from support.probe import PROBE_BITS, compile_probe, put_in_slot

pytestmark = pytest.mark.kernel

SRC = addr("2001:db8:10::1")
DST = addr("2001:db8:20::2")
MULTICAST = addr("ff0e::114")
SPORT, DPORT = 40312, 5001
LABEL = 0xABCDE
PAYLOAD = b"flowlabel test payload"
MARKED = {"seen": 1, "ipv6": 1, "marked": 1}

HOP = Ext(IPPROTO_HOPOPTS)


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Program]:
    with Program(compile_probe(tmp_path_factory.mktemp("writer")), program="probe") as loaded:
        yield loaded


@pytest.fixture
def marker() -> Iterator[Classifier]:
    """A classifier of its own: the tests change what its program arrays hold."""
    with Program(OBJECT) as loaded:
        classifier = Classifier(loaded, l3=False)
        yield classifier
        classifier.clear()


def prog_id(fd: int) -> int:
    ffi, lib = extension()
    out = [ffi.new("uint32_t *") for _ in range(4)]
    assert lib.fl_prog_info(fd, *out) == 0
    return int(out[0][0])


def slot_id(array_fd: int) -> int:
    ffi, lib = extension()
    found = ffi.new("uint32_t *")
    assert lib.bpf_map_lookup_elem(array_fd, ffi.new("uint32_t *", 0), found) == 0
    return int(found[0])


def frame(proto: int, daddr: bytes = DST, *, label: int = 0, tclass: int = 0, exts: tuple[Ext, ...] = (),
          tags: tuple[tuple[int, int], ...] = ()) -> bytes:
    transport = udp(SPORT, DPORT, PAYLOAD) if proto == IPPROTO_UDP else tcp(SPORT, DPORT, PAYLOAD)
    return ethernet(ipv6(SRC, daddr, proto, transport, exts=exts, tclass=tclass, label=label), tags=tags)


def written(marker: Classifier, packet: bytes) -> bytes:
    out = marker.run(packet)
    assert out.run.retval == TC_ACT_OK
    assert out.counted == MARKED
    return out.run.data


def test_the_writer_is_loaded_where_the_kernel_can_run_it() -> None:
    with Program(OBJECT) as loaded:
        if HAS_DIRECT_WRITER:
            assert loaded.writer is not None, loaded.writer_missing
            assert slot_id(loaded.writers_fd) == prog_id(loaded.writer.prog_fd)
        else:
            assert loaded.writer is None
            assert loaded.writer_missing == f"this kernel has no {KFUNC} ({KFUNC_SINCE})"
    with Program(OBJECT, writer=False) as loaded:
        assert loaded.writer is None and loaded.writer_missing == "not asked for"


@pytest.mark.parametrize("tclass", [0x00, 0x03, 0xB8, 0xFF])
def test_the_writer_marks_unicast_udp_and_keeps_the_traffic_class(marker: Classifier, tclass: int) -> None:
    assert (marker.program.writer is not None) == HAS_DIRECT_WRITER, marker.program.writer_missing
    marker.add(FlowKey(IPPROTO_UDP, SRC, DST, SPORT, DPORT), LABEL)
    assert written(marker, frame(IPPROTO_UDP, tclass=tclass, label=0x12345)) == \
        frame(IPPROTO_UDP, tclass=tclass, label=LABEL)


@pytest.mark.parametrize("exts", [(), (HOP,)], ids=["plain", "extension-header"])
def test_unicast_udp_goes_to_the_writer(marker: Classifier, probe: Program, exts: tuple[Ext, ...]) -> None:
    marker.add(FlowKey(IPPROTO_UDP, SRC, DST, SPORT, DPORT), LABEL)
    put_in_slot(marker.program.writers_fd, probe.prog_fd)
    assert written(marker, frame(IPPROTO_UDP, tclass=0xB8, exts=exts)) == \
        frame(IPPROTO_UDP, tclass=0xB8, label=LABEL ^ PROBE_BITS, exts=exts)


@pytest.mark.parametrize("case", ["tcp", "multicast", "vlan"])
def test_other_packets_are_written_by_the_helper(marker: Classifier, probe: Program, case: str) -> None:
    proto = IPPROTO_TCP if case == "tcp" else IPPROTO_UDP
    daddr = MULTICAST if case == "multicast" else DST
    tags = ((0x8100, 7),) if case == "vlan" else ()
    marker.add(FlowKey(proto, SRC, daddr, SPORT, DPORT), LABEL)
    put_in_slot(marker.program.writers_fd, probe.prog_fd)
    assert written(marker, frame(proto, daddr, tags=tags)) == frame(proto, daddr, label=LABEL, tags=tags)


def test_a_label_already_right_is_not_handed_over(marker: Classifier, probe: Program) -> None:
    marker.add(FlowKey(IPPROTO_UDP, SRC, DST, SPORT, DPORT), LABEL)
    put_in_slot(marker.program.writers_fd, probe.prog_fd)
    packet = frame(IPPROTO_UDP, label=LABEL)
    assert written(marker, packet) == packet


def test_udp_is_marked_with_the_writers_slot_empty(marker: Classifier) -> None:
    # The kernel empties a program array when no process holds it any more, as after the
    # daemon is killed with its tc filter left in place.
    marker.add(FlowKey(IPPROTO_UDP, SRC, DST, SPORT, DPORT), LABEL)
    put_in_slot(marker.program.writers_fd, None)
    assert written(marker, frame(IPPROTO_UDP, tclass=0x03)) == frame(IPPROTO_UDP, tclass=0x03, label=LABEL)


@needs_direct_writer
def test_the_writer_stores_a_packet_that_is_not_shared(marker: Classifier, probe: Program) -> None:
    assert marker.program.writer is not None
    marker.add(FlowKey(IPPROTO_UDP, SRC, DST, SPORT, DPORT), LABEL)
    put_in_slot(marker.program.writer.stores_fd, probe.prog_fd)
    assert written(marker, frame(IPPROTO_UDP, tclass=0x03)) == \
        frame(IPPROTO_UDP, tclass=0x03, label=LABEL ^ PROBE_BITS)


@needs_direct_writer
def test_the_writer_writes_with_the_helper_when_its_store_is_missing(marker: Classifier) -> None:
    assert marker.program.writer is not None
    marker.add(FlowKey(IPPROTO_UDP, SRC, DST, SPORT, DPORT), LABEL)
    put_in_slot(marker.program.writer.stores_fd, None)
    assert written(marker, frame(IPPROTO_UDP, tclass=0xB8)) == frame(IPPROTO_UDP, tclass=0xB8, label=LABEL)


@pytest.mark.parametrize("l3", [False, True], ids=["ethernet", "l3"])
def test_the_writer_stores_at_the_modes_offset(l3: bool) -> None:
    src = l3_saddr(SRC) if l3 else SRC  # BPF_PROG_TEST_RUN reads bytes 12-13 as an ethertype
    with Program(OBJECT, l3=l3) as loaded:
        assert (loaded.writer is not None) == HAS_DIRECT_WRITER, loaded.writer_missing
        classifier = Classifier(loaded, l3=l3)
        classifier.add(FlowKey(IPPROTO_UDP, src, DST, SPORT, DPORT), LABEL)
        packet = ipv6(src, DST, IPPROTO_UDP, udp(SPORT, DPORT, PAYLOAD), label=0xFFFFF)
        expected = ipv6(src, DST, IPPROTO_UDP, udp(SPORT, DPORT, PAYLOAD), label=LABEL)
        if not l3:
            packet, expected = ethernet(packet), ethernet(expected)
        assert written(classifier, packet) == expected
        classifier.clear()
