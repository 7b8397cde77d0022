"""The presence filter and the per-CPU flow cache in front of the flow-map lookup.

The filter may only ever let extra packets through to the lookup (never hide a
flow that is in the map), its bits follow adds and removes with shared slots
counted, and a cached label never outlives the change that made it wrong: the
very next packet after a remove or a label change gets the new answer.

BPF_PROG_TEST_RUN runs the program on the calling CPU, so the tests that count
on the cache pin the process to one CPU.
"""

from __future__ import annotations

import os
import platform
import random
from collections.abc import Iterator

import pytest
from harness import OBJECT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packets import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    LABEL_MASK,
    TC_ACT_OK,
    FlowKey,
    addr,
    flow_frame,
    l3_saddr,
    with_label,
)

from flowlabel.bpf.ext import extension
from flowlabel.bpf.program import cache_is_safe
from flowlabel.flow import Flow
from flowlabel.marker import Marker, Program
from flowlabel.rules import PortRange, Rule, compile_rules

pytestmark = pytest.mark.kernel

#: The smallest filter: slots are shared often, which is what these tests need.
SMALL_FILTER = 4096


@pytest.fixture(scope="module")
def small() -> Iterator[Program]:
    """A program whose filter has few slots, on an otherwise empty map."""
    with Program(OBJECT, max_flows=1024, filter_bits=SMALL_FILTER) as program:
        yield program


@pytest.fixture
def one_cpu() -> Iterator[int]:
    """Pin the process to one CPU, so that every test run sees the same per-CPU cache."""
    allowed = os.sched_getaffinity(0)
    cpu = min(allowed)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, allowed)


def packed(program: Program, key: FlowKey) -> bytes:
    return program.flows.key(key.proto, key.saddr, key.daddr, key.sport, key.dport)


def label_of(program: Program, key: FlowKey, *, l3: bool = False) -> int | None:
    """The label the program writes into a packet of ``key``, or None if it leaves it alone."""
    data = flow_frame(key, l3=l3)
    run = program.test_run(data)
    assert run.retval == TC_ACT_OK
    if run.data == data:
        return None
    ip6 = 0 if l3 else 14
    assert run.data == with_label(data, ip6, int.from_bytes(run.data[ip6:ip6 + 4], "big") & LABEL_MASK)
    return int.from_bytes(run.data[ip6 + 1:ip6 + 4], "big") & LABEL_MASK


def random_key(rng: random.Random) -> FlowKey:
    return FlowKey(rng.choice((IPPROTO_TCP, IPPROTO_UDP)), rng.randbytes(16), rng.randbytes(16),
                   rng.randrange(1 << 16), rng.randrange(1 << 16))


def same_slot(program: Program, key: FlowKey, rng: random.Random) -> FlowKey:
    """Another key in the same filter slot as ``key``."""
    slot = program.flows.filter_slot(packed(program, key))
    while True:
        other = random_key(rng)
        if other != key and program.flows.filter_slot(packed(program, other)) == slot:
            return other


def cache_slot(program: Program, key: FlowKey) -> int:
    """The entry of the per-CPU cache that holds ``key`` (marker.h)."""
    _, lib = extension()
    return int(lib.flowlabel_filter_hash(packed(program, key)) >> 16) & (lib.FLOWLABEL_CACHE_SLOTS - 1)


def same_cache_slot(program: Program, key: FlowKey, rng: random.Random) -> FlowKey:
    slot = cache_slot(program, key)
    while True:
        other = random_key(rng)
        if other != key and cache_slot(program, other) == slot:
            return other


def remove_all(program: Program, keys: list[FlowKey]) -> None:
    for key in keys:
        program.flows.delete(packed(program, key))


# -- the filter -------------------------------------------------------------------


def test_default_filter_size_follows_max_flows() -> None:
    with Program(OBJECT, max_flows=1000) as program:
        assert program.flows.filter_bits == 8192  # 8 bits per flow, rounded up to a power of two
    with Program(OBJECT, max_flows=10) as program:
        assert program.flows.filter_bits == SMALL_FILTER


@pytest.mark.parametrize("bits", [1000, 2048, 1 << 28])
def test_filter_size_must_be_a_power_of_two_in_range(bits: int) -> None:
    with pytest.raises(ValueError, match="filter_bits"):
        Program(OBJECT, filter_bits=bits)


keys = st.builds(FlowKey, st.sampled_from([IPPROTO_TCP, IPPROTO_UDP]), st.binary(min_size=16, max_size=16),
                 st.binary(min_size=16, max_size=16), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(present=st.lists(keys, min_size=1, max_size=300, unique=True), absent=st.lists(keys, max_size=100),
       removed=st.data())
def test_filter_never_hides_a_flow(small: Program, present: list[FlowKey], absent: list[FlowKey],
                                   removed: st.DataObject) -> None:
    gone = removed.draw(st.lists(st.sampled_from(present), unique=True, max_size=len(present) // 2))
    labels = {key: (i * 7919 + 1) & LABEL_MASK or 1 for i, key in enumerate(present)}
    try:
        for key in present:
            small.flows.put(packed(small, key), labels[key])
        for key in gone:
            assert small.flows.delete(packed(small, key))
        kept = [key for key in present if key not in gone]
        for key in kept:
            assert small.flows.filter_has(small.flows.filter_slot(packed(small, key)))
            assert label_of(small, key) == labels[key]
        for key in [*gone, *absent]:
            if key not in kept:
                assert label_of(small, key) is None
    finally:
        remove_all(small, present)
    assert not any(small.flows.filter_has(slot) for slot in range(SMALL_FILTER))


def test_bits_follow_add_and_remove(small: Program) -> None:
    key = FlowKey(IPPROTO_TCP, addr("2001:db8::1"), addr("2001:db8::2"), 40000, 443)
    slot = small.flows.filter_slot(packed(small, key))
    assert not small.flows.filter_has(slot)
    small.flows.put(packed(small, key), 0x11111)
    assert small.flows.filter_has(slot)
    small.flows.put(packed(small, key), 0x22222)  # a replaced label counts once
    assert small.flows.delete(packed(small, key))
    assert not small.flows.filter_has(slot)
    assert not small.flows.delete(packed(small, key))
    assert not small.flows.filter_has(slot)


def test_a_shared_slot_stays_set_until_its_last_flow_goes(small: Program) -> None:
    rng = random.Random(1)
    first = random_key(rng)
    second = same_slot(small, first, rng)
    slot = small.flows.filter_slot(packed(small, first))
    try:
        small.flows.put(packed(small, first), 0x00001)
        small.flows.put(packed(small, second), 0x00002)
        assert small.flows.delete(packed(small, first))
        assert small.flows.filter_has(slot)
        assert label_of(small, second) == 0x00002
        assert label_of(small, first) is None  # looked up: the bit is set for the other flow
        assert small.flows.delete(packed(small, second))
        assert not small.flows.filter_has(slot)
        assert label_of(small, second) is None
    finally:
        remove_all(small, [first, second])


def test_filter_miss_and_lookup_miss_both_count_as_missed(small: Program) -> None:
    rng = random.Random(2)
    present = random_key(rng)
    behind_set_bit = same_slot(small, present, rng)
    try:
        small.flows.put(packed(small, present), 5)
        for key in (behind_set_bit, random_key(rng)):
            before = small.counters()
            assert label_of(small, key) is None
            after = small.counters()
            moved = {name: after[name] - before[name] for name in after if after[name] != before[name]}
            assert moved == {"seen": 1, "ipv6": 1, "missed": 1}
    finally:
        remove_all(small, [present])


# -- the cache --------------------------------------------------------------------


def test_cache_hit_counts_as_marked(small: Program, one_cpu: int) -> None:
    key = FlowKey(IPPROTO_UDP, addr("2001:db8::a"), addr("2001:db8::b"), 5000, 5001)
    try:
        small.flows.put(packed(small, key), 0x54321)
        label_of(small, key)  # fills the cache
        before = small.counters()
        run = small.test_run(flow_frame(key), repeat=100)
        after = small.counters()
        assert run.data == with_label(flow_frame(key), 14, 0x54321)
        assert after["marked"] - before["marked"] == 100
        assert after["seen"] - before["seen"] == 100
    finally:
        remove_all(small, [key])


def test_next_packet_after_a_change_sees_it(small: Program, one_cpu: int) -> None:
    rng = random.Random(3)
    a = random_key(rng)
    b = same_slot(small, a, rng)  # keeps a's filter bit set, so only the cache stands between
    try:
        small.flows.put(packed(small, a), 0x0000A)
        small.flows.put(packed(small, b), 0x0000B)
        for _ in range(3):  # alternate the two flows
            assert label_of(small, a) == 0x0000A
            assert label_of(small, b) == 0x0000B
        assert label_of(small, a) == 0x0000A  # a is cached
        small.flows.put(packed(small, a), 0x000AA)
        assert label_of(small, a) == 0x000AA
        assert label_of(small, a) == 0x000AA
        small.flows.delete(packed(small, a))
        assert small.flows.filter_has(small.flows.filter_slot(packed(small, a)))
        assert label_of(small, a) is None
        assert label_of(small, b) == 0x0000B
        small.flows.put(packed(small, a), 0x00AAA)  # back as a new flow: no bump needed
        assert label_of(small, a) == 0x00AAA
    finally:
        remove_all(small, [a, b])


def test_flows_sharing_a_cache_entry_take_it_in_turn(small: Program, one_cpu: int) -> None:
    rng = random.Random(11)
    a = random_key(rng)
    b = same_cache_slot(small, a, rng)
    try:
        small.flows.put(packed(small, a), 0x00A0A)
        small.flows.put(packed(small, b), 0x00B0B)
        for _ in range(3):
            assert (label_of(small, a), label_of(small, b)) == (0x00A0A, 0x00B0B)
        small.flows.delete(packed(small, b))
        assert label_of(small, b) is None
        assert label_of(small, a) == 0x00A0A
    finally:
        remove_all(small, [a, b])


def test_interleaved_flows_each_see_the_next_change(small: Program, one_cpu: int) -> None:
    """Many flows cached at once (most in entries of their own): every one sees a relabel and a removal."""
    rng = random.Random(12)
    keys = [random_key(rng) for _ in range(64)]
    assert len({cache_slot(small, key) for key in keys}) > 32
    try:
        for i, key in enumerate(keys, 1):
            small.flows.put(packed(small, key), i)
        for _ in range(2):  # the second round is served from the cache
            assert [label_of(small, key) for key in keys] == list(range(1, 65))
        for i, key in enumerate(keys[:32]):
            small.flows.put(packed(small, key), 0x80000 | i)
        remove_all(small, keys[32:])
        assert [label_of(small, key) for key in keys[:32]] == [0x80000 | i for i in range(32)]
        assert [label_of(small, key) for key in keys[32:]] == [None] * 32
    finally:
        remove_all(small, keys)


def test_shared_programs_share_filter_and_generation(one_cpu: int) -> None:
    key = FlowKey(IPPROTO_TCP, l3_saddr(addr("2001:db8::1")), addr("2001:db8::2"), 1094, 40000)
    with Program(OBJECT, max_flows=64) as l2, Program(OBJECT, l3=True, share_flows_with=l2) as l3:
        assert l3.flows.filter_bits == l2.flows.filter_bits
        l2.flows.put(packed(l2, key), 0x12345)
        assert l3.flows.filter_has(l3.flows.filter_slot(packed(l3, key)))
        assert label_of(l3, key, l3=True) == 0x12345
        assert label_of(l2, key) == 0x12345
        l2.flows.put(packed(l2, key), 0x54321)  # the L3 copy's cache entry is stale now
        assert label_of(l3, key, l3=True) == 0x54321
        l3.flows.delete(packed(l3, key))
        assert label_of(l2, key) is None
        assert label_of(l3, key, l3=True) is None


# -- the cache option -----------------------------------------------------------


def rewrite_behind_the_cache(program: Program, key: FlowKey, label: int) -> None:
    """Change the flow's label in the map without moving the generation, as no user-space
    writer does: only a packet that takes the lookup can see the new label."""
    ffi, lib = extension()
    value = ffi.new("struct flow_value *", {"label": label, "seen": program.flows.epoch})
    assert lib.bpf_map_update_elem(program.flows.fd, packed(program, key), value, lib.BPF_EXIST) == 0


def test_cache_is_on_only_where_loads_are_ordered() -> None:
    assert cache_is_safe("x86_64")
    assert not cache_is_safe("aarch64")
    with Program(OBJECT, max_flows=16) as program:
        assert program.cache == (platform.machine() == "x86_64")


#: A site rule for other flows: with rules, the classifier takes its other path to the cache.
OTHER_FLOWS = Rule("rules[0]", ((2, 15),), IPPROTO_UDP, local_ports=PortRange(9000, 9000))


@pytest.mark.parametrize("rules", [False, True], ids=["no-rules", "rules"])
@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
def test_cache_option_decides_whether_a_packet_can_skip_the_lookup(cache: bool, rules: bool,
                                                                   one_cpu: int) -> None:
    key = FlowKey(IPPROTO_TCP, addr("2001:db8::c"), addr("2001:db8::d"), 41000, 2811)
    compiled = compile_rules([OTHER_FLOWS]) if rules else None
    with Program(OBJECT, max_flows=16, cache=cache, rules=compiled) as program:
        assert program.cache is cache
        program.flows.put(packed(program, key), 0x0000C)
        assert label_of(program, key) == 0x0000C  # fills the cache when there is one
        rewrite_behind_the_cache(program, key, 0x000CC)
        # With the cache, the entry still vouches for the old label; without, the lookup finds the new one.
        assert label_of(program, key) == (0x0000C if cache else 0x000CC)
        program.flows.put(packed(program, key), 0x00CCC)  # a real change moves the generation
        assert label_of(program, key) == 0x00CCC
        before = program.counters()
        run = program.test_run(flow_frame(key), repeat=50)
        assert run.data == with_label(flow_frame(key), 14, 0x00CCC)
        assert program.counters()["marked"] - before["marked"] == 50


# -- through the Marker -------------------------------------------------------------


@pytest.fixture
def marker() -> Iterator[Marker]:
    from support.netns import Namespace

    with Namespace() as ns, ns.entered(), Marker(["lo"], max_flows=100) as marker:
        yield marker


def marker_program(marker: Marker) -> Program:
    return marker._programs[False]  # the copy attached to lo, which has a link-layer header


def flow_key(flow: Flow, reverse: bool = False) -> FlowKey:
    proto = IPPROTO_TCP if flow.protocol == "tcp" else IPPROTO_UDP
    if reverse:
        return FlowKey(proto, flow.dst.packed, flow.src.packed, flow.dport, flow.sport)
    return FlowKey(proto, flow.src.packed, flow.dst.packed, flow.sport, flow.dport)


def test_marker_keeps_filter_and_cache_right(marker: Marker, one_cpu: int) -> None:
    program = marker_program(marker)
    local = Flow.of("tcp", "::1", "::1", 40001, 443)
    # Neither end is local: inserted both ways.
    remote = Flow.of("udp", "2001:db8::10", "2001:db8::20", 5000, 6000)
    marker.add(local, 0x00001)
    marker.add(remote, 0x00002)
    assert len(marker) == 3
    both = [flow_key(remote), flow_key(remote, reverse=True)]
    for key in both:
        assert program.flows.filter_has(program.flows.filter_slot(packed(program, key)))
        assert label_of(program, key) == 0x00002
    assert label_of(program, flow_key(local)) == 0x00001

    marker.add(local, 0x00003)  # cached, then relabelled
    assert label_of(program, flow_key(local)) == 0x00003
    assert marker.remove(remote)
    for key in both:
        assert label_of(program, key) is None
    assert label_of(program, flow_key(local)) == 0x00003

    assert marker.add_many([(remote, 0x00004), (local, 0x00005)]) == 3
    assert [label_of(program, key) for key in both] == [0x00004, 0x00004]
    assert label_of(program, flow_key(local)) == 0x00005

    marker.clear()
    assert label_of(program, flow_key(local)) is None
    assert not any(program.flows.filter_has(slot) for slot in range(program.flows.filter_bits))
    marker.add(local, 0x00006)
    assert label_of(program, flow_key(local)) == 0x00006
