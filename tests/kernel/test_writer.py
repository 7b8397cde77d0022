"""Which packets the classifier hands to its direct writer, and that nothing depends on it.

The classifier tail-calls ``label_writer`` through its ``writers`` program array for unicast
UDP with no VLAN tag, and writes everything else with bpf_skb_store_bytes. To see which way
a packet went, a probe program takes the writer's place in the array: it writes the word it
is handed with PROBE_BITS of the label flipped.
"""

from __future__ import annotations

import subprocess
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
    tcp,
    udp,
)

from flowlabel.bpf.ext import extension
from flowlabel.marker import Program
from support.tools import program

pytestmark = pytest.mark.kernel

SRC = addr("2001:db8:10::1")
DST = addr("2001:db8:20::2")
MULTICAST = addr("ff0e::114")
SPORT, DPORT = 40312, 5001
LABEL = 0xABCDE
PROBE_BITS = 0x0BEEF
PAYLOAD = b"flowlabel test payload"
MARKED = {"seen": 1, "ipv6": 1, "marked": 1}

# Stores the word the classifier hands over (cb[0]) after Ethernet, with PROBE_BITS flipped.
# __sk_buff is declared up to data_end: cb at offset 48, data at 76, data_end at 80.
PROBE = f"""
#define SEC(name) __attribute__((section(name), used))
struct __sk_buff {{ unsigned int head[12], cb[5], hash, tc_classid, data, data_end; }};
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define BITS __builtin_bswap32({PROBE_BITS})
#else
#define BITS {PROBE_BITS}
#endif
SEC("tc") int probe(struct __sk_buff *skb)
{{
	unsigned int *word = (void *)(long)skb->data + 14;

	if ((void *)(word + 1) <= (void *)(long)skb->data_end)
		*word = skb->cb[0] ^ BITS;
	return 0;
}}
char LICENSE[] SEC("license") = "GPL";
"""

HOP = Ext(IPPROTO_HOPOPTS)


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Program]:
    clang = program("clang", "clang: to compile the probe that stands in for the writer")
    out = tmp_path_factory.mktemp("writer")
    (out / "probe.bpf.c").write_text(PROBE)
    subprocess.run([clang, "-target", "bpf", "-O2", "-c", str(out / "probe.bpf.c"),
                    "-o", str(out / "probe.bpf.o")], check=True)
    with Program(out / "probe.bpf.o", program="probe") as loaded:
        yield loaded


@pytest.fixture
def marker() -> Iterator[Classifier]:
    """A classifier of its own: the tests change what its program array holds."""
    with Program(OBJECT) as loaded:
        classifier = Classifier(loaded, l3=False)
        yield classifier
        classifier.clear()


def set_writer(marker: Classifier, prog_fd: int | None) -> None:
    """Put ``prog_fd`` in the writer's slot, or empty the slot (None)."""
    ffi, lib = extension()
    key = ffi.new("uint32_t *", 0)
    fd = marker.program.writers_fd
    assert fd >= 0, "the classifier has no writers array"
    err = lib.bpf_map_update_elem(fd, key, ffi.new("uint32_t *", prog_fd), 0) if prog_fd is not None \
        else lib.bpf_map_delete_elem(fd, key)
    assert err == 0, err


def frame(proto: int, daddr: bytes = DST, *, label: int = 0, tclass: int = 0, exts: tuple[Ext, ...] = (),
          tags: tuple[tuple[int, int], ...] = ()) -> bytes:
    transport = udp(SPORT, DPORT, PAYLOAD) if proto == IPPROTO_UDP else tcp(SPORT, DPORT, PAYLOAD)
    return ethernet(ipv6(SRC, daddr, proto, transport, exts=exts, tclass=tclass, label=label), tags=tags)


def written(marker: Classifier, packet: bytes) -> bytes:
    out = marker.run(packet)
    assert out.run.retval == TC_ACT_OK
    assert out.counted == MARKED
    return out.run.data


def test_the_shipped_writer_holds_its_slot() -> None:
    ffi, lib = extension()
    with Program(OBJECT) as loaded:
        prog_id = ffi.new("uint32_t *")
        assert lib.bpf_map_lookup_elem(loaded.writers_fd, ffi.new("uint32_t *", 0), prog_id) == 0
        assert prog_id[0] not in (0, loaded.info().id)  # a program, and not the classifier itself


@pytest.mark.parametrize("tclass", [0x00, 0x03, 0xB8, 0xFF])
def test_the_writer_marks_unicast_udp_and_keeps_the_traffic_class(marker: Classifier, tclass: int) -> None:
    marker.add(FlowKey(IPPROTO_UDP, SRC, DST, SPORT, DPORT), LABEL)
    assert written(marker, frame(IPPROTO_UDP, tclass=tclass, label=0x12345)) == \
        frame(IPPROTO_UDP, tclass=tclass, label=LABEL)


@pytest.mark.parametrize("exts", [(), (HOP,)], ids=["plain", "extension-header"])
def test_unicast_udp_goes_to_the_writer(marker: Classifier, probe: Program, exts: tuple[Ext, ...]) -> None:
    marker.add(FlowKey(IPPROTO_UDP, SRC, DST, SPORT, DPORT), LABEL)
    set_writer(marker, probe.prog_fd)
    assert written(marker, frame(IPPROTO_UDP, tclass=0xB8, exts=exts)) == \
        frame(IPPROTO_UDP, tclass=0xB8, label=LABEL ^ PROBE_BITS, exts=exts)


@pytest.mark.parametrize("case", ["tcp", "multicast", "vlan"])
def test_other_packets_are_written_by_the_helper(marker: Classifier, probe: Program, case: str) -> None:
    proto = IPPROTO_TCP if case == "tcp" else IPPROTO_UDP
    daddr = MULTICAST if case == "multicast" else DST
    tags = ((0x8100, 7),) if case == "vlan" else ()
    marker.add(FlowKey(proto, SRC, daddr, SPORT, DPORT), LABEL)
    set_writer(marker, probe.prog_fd)
    assert written(marker, frame(proto, daddr, tags=tags)) == frame(proto, daddr, label=LABEL, tags=tags)


def test_a_label_already_right_is_not_handed_over(marker: Classifier, probe: Program) -> None:
    marker.add(FlowKey(IPPROTO_UDP, SRC, DST, SPORT, DPORT), LABEL)
    set_writer(marker, probe.prog_fd)
    packet = frame(IPPROTO_UDP, label=LABEL)
    assert written(marker, packet) == packet


def test_udp_is_marked_with_the_writers_slot_empty(marker: Classifier) -> None:
    # The kernel empties a program array when no process holds it any more, as after the
    # daemon is killed with its tc filter left in place.
    marker.add(FlowKey(IPPROTO_UDP, SRC, DST, SPORT, DPORT), LABEL)
    set_writer(marker, None)
    assert written(marker, frame(IPPROTO_UDP, tclass=0x03)) == frame(IPPROTO_UDP, tclass=0x03, label=LABEL)
