"""The enrichment members written as JSON text equal the objects json.dumps would write."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from flowlabel import enrichment, tcpinfo

_NAMES = [name for name, _ in tcpinfo.TCP_INFO_FIELDS]
_HEAD = ("state", "ca_state", "retransmits", "probes", "backoff", "options", "snd_wscale", "rcv_wscale",
         "delivery_rate_app_limited", "fastopen_client_fail")
#: Values that the compatible shape treats specially (rto 3 s, ssthresh "infinite") and any other.
_VALUES = st.sampled_from([0, 1, 3_000_000, 0xFFFF, 0xFFFFFFFF]) | st.integers(0, 2**64 - 1)


@st.composite
def tcp_infos(draw: st.DrawFn) -> dict[str, Any]:
    """A tcp_info as tcpinfo.sweep_info gives it; older kernels report fewer fields (a prefix)."""
    info: dict[str, Any] = {name: draw(st.integers(0, 15)) for name in _HEAD}
    for name in _NAMES[: draw(st.integers(25, len(_NAMES)))]:
        info[name] = draw(_VALUES)
    info["cong"] = draw(st.sampled_from([None, "", "cubic", "bbr", 'we"ird']))
    return info


@given(tcp_infos(), st.sampled_from(["lean", "compatible", ""]))
def test_encoder_writes_what_json_dumps_writes(info: dict[str, Any], mode: str) -> None:
    expected = enrichment.members(info, mode)
    written = enrichment.Encoder(mode).members(info)
    assert written == json.dumps(expected, separators=(",", ":"))[1:-1]
    assert json.loads("{" + written + "}") == expected


def test_encoder_serves_each_shape_of_tcp_info_its_own_format() -> None:
    # A host can hold tcp_info of one length only, but the format must never be taken for another.
    encoder = enrichment.Encoder("lean")
    short = {name: 1 for name in (*_HEAD, *_NAMES[:30])} | {"cong": "cubic"}
    full = {name: 2 for name in (*_HEAD, *_NAMES)} | {"cong": "cubic"}
    for info in (short, full, short, full):
        assert json.loads("{" + encoder.members(info) + "}")["netlink"] == enrichment.netlink(info, "lean")
