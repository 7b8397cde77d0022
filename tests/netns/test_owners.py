"""Every map entry owned: a flow and its reverse share one entry, and each removes only what it holds.

Namespace ``a`` (fd00::1) marks on its veth; packets are captured on ``b``'s side.
"""

from __future__ import annotations

import pytest

from flowlabel.flow import Flow
from flowlabel.marker import Marker
from support.netns import A, B, Pair

pytestmark = pytest.mark.netns

SPORT, DPORT = 4000, 5000
# As XRootD 5.5 announces it (the server, here, as the source) and as 5.8 does for an upload.
OUT = Flow.of("udp", A, B, SPORT, DPORT)
BACK = OUT.reversed()


def test_a_flow_and_its_reverse_share_one_entry_until_both_end(pair: Pair) -> None:
    with pair.a.entered():
        marker = Marker([pair.if_a], max_flows=16)
    try:
        assert marker.add_many([(OUT, 0x11111), (BACK, 0x22222)]) == 1
        assert len(marker) == 1 and marker.map_entries() == 1
        assert sorted(map(str, marker.holders(OUT))) == sorted(map(str, [OUT, BACK]))
        assert pair.labels([(SPORT, DPORT)])[(SPORT, DPORT)] == {0x22222}  # the label added last

        assert marker.remove(BACK)
        assert pair.labels([(SPORT, DPORT)])[(SPORT, DPORT)] == {0x11111}  # the remaining holder's
        assert marker.map_entries() == 1 and marker.holders(OUT) == [OUT]
        assert not marker.remove(BACK)  # it holds nothing any more

        assert marker.remove(OUT)
        assert pair.labels([(SPORT, DPORT)])[(SPORT, DPORT)] == {0}
        assert len(marker) == 0 and marker.map_entries() == 0
    finally:
        with pair.a.entered():
            marker.close()


def test_one_by_one_the_same_holds(pair: Pair) -> None:
    with pair.a.entered():
        marker = Marker([pair.if_a], max_flows=16)
    try:
        marker.add(BACK, 0x33333)
        marker.add(OUT, 0x44444)
        marker.add(BACK, 0x55555)  # relabelled, and now the most recent again
        assert marker.map_entries() == 1
        assert pair.labels([(SPORT, DPORT)])[(SPORT, DPORT)] == {0x55555}
        assert marker.remove(BACK)
        assert pair.labels([(SPORT, DPORT)])[(SPORT, DPORT)] == {0x44444}
        assert marker.remove(OUT) and marker.map_entries() == 0
    finally:
        with pair.a.entered():
            marker.close()


def test_what_was_written_is_removed_after_the_address_moved(pair: Pair) -> None:
    with pair.a.entered():
        marker = Marker([pair.if_a], max_flows=16)
    try:
        # Marked while fd00::1 is a's: the entry is keyed with it as the source.
        marker.add(OUT, 0x66666)
        assert marker.map_entries() == 1
        # The address moves to the other side: the same flow would now be keyed the other way round.
        pair.a.ip("addr", "del", f"{A}/64", "dev", pair.if_a)
        pair.a.ip("addr", "add", f"{B}/128", "dev", "lo")
        marker._local_read = 0.0  # the next look-up of the host's addresses reads them afresh
        assert marker.get(OUT) == 0x66666  # still the entry it holds
        assert marker.remove(OUT)
        assert marker.map_entries() == 0 and len(marker) == 0
    finally:
        with pair.a.entered():
            marker.close()
