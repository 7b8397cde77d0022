"""What ongoing (and end) fireflies carry about their TCP connection, in flowd-go's three shapes.

The ``netlink`` member holds the kernel's ``tcp_info`` as flowd-go 2.x writes it
for ``enrichmentMode``:

- ``lean``: ``tcpInfo`` with 11 members and ``cong``;
- ``compatible``: one flat object with flowd's 47 names (times in whole
  milliseconds, as flowd's ``netlink`` field has them);
- anything else (flowd-go documents the empty string): ``tcpInfo`` with every
  ``tcp_info`` member and ``cong`` ("full"). flowd-go's full mode also carries
  socket, memory and BBR/Vegas/DCTCP blocks, which flowlabel does not read.

Members of ``lean`` and full objects are sorted by name, as flowd-go's are.
``usage`` is XRootD's: bytes ``received`` and ``sent`` (acknowledged).

:func:`members` builds them as objects (for end fireflies); :class:`Encoder`
writes the same members as JSON text for the ongoing fireflies of every flow
each period.
"""

from __future__ import annotations

import json
from operator import itemgetter
from typing import Any, Callable

__all__ = ["COMPATIBLE", "FULL", "LEAN", "LEAN_FIELDS", "MODES", "Encoder", "members", "netlink", "usage"]

#: flowd-go's tcpInfo member names, by tcp_info field (full mode).
FULL = {
    "state": "state", "ca_state": "caState", "retransmits": "retransmits", "probes": "probes",
    "backoff": "backoff", "options": "options", "snd_wscale": "sndWscale", "rcv_wscale": "rcvdWscale",
    "delivery_rate_app_limited": "deliveryRateAppLimited", "fastopen_client_fail": "fastOpenClientFail",
    "rto": "rto", "ato": "ato", "snd_mss": "sndMss", "rcv_mss": "rcvMss", "unacked": "unAcked",
    "sacked": "sAcked", "lost": "lost", "retrans": "retrans", "fackets": "fAckets",
    "last_data_sent": "lastDataSent", "last_ack_sent": "lastAckSent", "last_data_recv": "lastDataRecv",
    "last_ack_recv": "lastAckRecv", "pmtu": "pMtu", "rcv_ssthresh": "rcvSsThresh", "rtt": "rtt",
    "rttvar": "rttVar", "snd_ssthresh": "sndSsThresh", "snd_cwnd": "sndCwnd", "advmss": "advMss",
    "reordering": "reordering", "rcv_rtt": "rcvRtt", "rcv_space": "rcvSpace", "total_retrans": "totalRetrans",
    "pacing_rate": "pacingRate", "max_pacing_rate": "maxPacingRate", "bytes_acked": "bytesAcked",
    "bytes_received": "bytesRecv", "segs_out": "segsOut", "segs_in": "segsIn",
    "notsent_bytes": "notsentBytes",
    "min_rtt": "minRtt", "data_segs_in": "dataSegsIn", "data_segs_out": "dataSegsOut",
    "delivery_rate": "deliveryRate", "busy_time": "busyTime", "rwnd_limited": "rwndLimited",
    "sndbuf_limited": "sndBufLimited", "delivered": "delivered", "delivered_ce": "deliveredCe",
    "bytes_sent": "bytesSent", "bytes_retrans": "bytesRetrans", "dsack_dups": "dsAckDups",
    "reord_seen": "reordSeen", "rcv_ooopack": "rcvOooPack", "snd_wnd": "sndWnd",
}
#: flowd-go's lean tcpInfo members (``Retransmits`` is capitalised there too).
LEAN = {
    "retransmits": "Retransmits", "snd_mss": "sndMss", "pmtu": "pMtu", "rtt": "rtt", "rttvar": "rttVar",
    "snd_ssthresh": "sndSsThresh", "snd_cwnd": "sndCwnd", "advmss": "advMss", "min_rtt": "minRtt",
    "delivery_rate": "deliveryRate", "bytes_sent": "bytesSent",
}
#: The tcp_info fields the lean shape reads: its members and the usage block's.
LEAN_FIELDS = (*LEAN, "bytes_received", "bytes_acked")
_MS = 1000
_STATE_NAMES = {1: "established", 2: "syn-sent", 3: "syn-recv", 4: "fin-wait-1", 5: "fin-wait-2",
                6: "time-wait", 7: "unconnected", 8: "close-wait", 9: "last-ack", 10: "listening",
                11: "closing"}
#: flowd's names, in flowd-go's order, with how each value is made from tcp_info.
COMPATIBLE: tuple[tuple[str, Any], ...] = (
    ("state", lambda i: _STATE_NAMES.get(i["state"], "invalid")),
    ("pmtu", "pmtu"), ("retrans", "retrans"), ("ato", lambda i: i["ato"] // _MS),
    ("rto", lambda i: 0 if i["rto"] == 3_000_000 else i["rto"] // _MS),
    ("snd_wscale", "snd_wscale"), ("rcv_wscale", "rcv_wscale"), ("snd_mss", "snd_mss"), ("snd_cwnd",
    "snd_cwnd"),
    ("snd_ssthresh", lambda i: i["snd_ssthresh"] if i["snd_ssthresh"] < 0xFFFF else 0),
    ("rtt", lambda i: i["rtt"] // _MS), ("rttvar", lambda i: i["rttvar"] // _MS),
    ("rcv_rtt", lambda i: i["rcv_rtt"] // _MS), ("rcv_space", "rcv_space"),
    ("opts", lambda i: [name for bit, name in ((1, "ts"), (2, "sack"), (8, "ecn")) if i["options"] & bit]),
    ("last_data_sent", "last_data_sent"), ("rcv_ssthresh", "rcv_ssthresh"), ("segs_in", "segs_in"),
    ("segs_out", "segs_out"), ("data_segs_in", "data_segs_in"), ("data_segs_out", "data_segs_out"),
    ("lost", "lost"), ("notsent_bytes", "notsent_bytes"), ("rcv_mss", "rcv_mss"), ("pacing_rate",
    "pacing_rate"),
    ("retransmits", "retransmits"), ("min_rtt", "min_rtt"), ("rwnd_limited", "rwnd_limited"),
    ("max_pacing_rate", "max_pacing_rate"), ("probes", "probes"), ("reordering", "reordering"),
    ("last_data_recv", "last_data_recv"), ("bytes_received", "bytes_received"), ("fackets", "fackets"),
    ("last_ack_recv", "last_ack_recv"), ("last_ack_sent", "last_ack_sent"), ("unacked", "unacked"),
    ("sacked", "sacked"), ("bytes_acked", "bytes_acked"), ("delivery_rate_app_limited",
    "delivery_rate_app_limited"),
    ("delivery_rate", "delivery_rate"), ("sndbuf_limited", "sndbuf_limited"), ("ca_state", "ca_state"),
    ("busy_time", "busy_time"), ("total_retrans", "total_retrans"), ("advmss", "advmss"), ("backoff",
    "backoff"),
)
#: The modes, as flowd-go names them; any other value is the full shape.
MODES = ("lean", "compatible")


def _renamed(info: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    return dict(sorted((names[field], value) for field, value in info.items() if field in names))


def netlink(info: dict[str, Any], mode: str) -> dict[str, Any]:
    """The ``netlink`` member of a firefly for the ``tcp_info`` fields ``info`` (and its ``cong``)."""
    if mode == "compatible":
        return {name: (source(info) if callable(source) else info.get(source)) for name, source in COMPATIBLE
                if callable(source) or source in info}
    names = LEAN if mode == "lean" else FULL
    out: dict[str, Any] = {"tcpInfo": _renamed(info, names)}
    if info.get("cong"):
        out["cong"] = {"algorithm": info["cong"]}
    return dict(sorted(out.items()))


def members(info: dict[str, Any], mode: str) -> dict[str, Any]:
    """The members an enriched firefly adds: ``usage`` and ``netlink``."""
    return {"usage": usage(info), "netlink": netlink(info, mode)}


def usage(info: dict[str, Any]) -> dict[str, int]:
    """XRootD's ``usage``: bytes received, and bytes sent (acknowledged by the peer)."""
    return {"received": int(info.get("bytes_received", 0)), "sent": int(info.get("bytes_acked", 0))}


_JSON_TEXTS: dict[Any, str] = {}


def _json_value(value: Any) -> Any:
    """``value`` as str.format should write it into JSON text: numbers as they are, the rest encoded.

    The rest are few (state names, option lists, congestion controls), so their
    texts are kept.
    """
    if type(value) is int:
        return value
    key = tuple(value) if isinstance(value, list) else value
    text = _JSON_TEXTS.get(key)
    if text is None:
        text = json.dumps(value, separators=(",", ":"))
        if len(_JSON_TEXTS) < 1024:
            _JSON_TEXTS[key] = text
    return text


class Encoder:
    """``"usage":{...},"netlink":{...}`` for a ``tcp_info`` dict, in ``mode``'s shape.

    The text is what ``json.dumps(members(info, mode))`` writes (compact), made
    from a format string compiled once per shape of ``info`` (kernels differ in
    how many fields they report) instead of building and encoding the objects for
    every flow and period.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._compiled: dict[tuple[int, bool], tuple[str, Callable[[dict[str, Any]], tuple[Any, ...]]]] = {}

    def members(self, info: dict[str, Any]) -> str:
        shape = (len(info), bool(info.get("cong")))
        compiled = self._compiled.get(shape)
        if compiled is None:
            compiled = self._compiled[shape] = self._compile(info)
        template, values = compiled
        return template.format(*values(info))

    def _compile(self, info: dict[str, Any]) -> tuple[str, Callable[[dict[str, Any]], tuple[Any, ...]]]:
        # (JSON member name, tcp_info field shown unchanged, or the function that makes the value)
        members: list[tuple[str, str | Callable[[dict[str, Any]], Any]]]
        if self.mode == "compatible":
            members = [(name, source) for name, source in COMPATIBLE if callable(source) or source in info]
        else:
            shown = LEAN if self.mode == "lean" else FULL
            members = sorted((shown[field], field) for field in info if field in shown)
        plain = [source for _, source in members if isinstance(source, str)]
        made = [source for _, source in members if not isinstance(source, str)]
        # Format arguments: usage (0, 1), the plain fields, the made values, the congestion control.
        slots, next_plain, next_made = [], 2, 2 + len(plain)
        for name, source in members:
            if isinstance(source, str):
                slots.append(f'"{name}":{{{next_plain}}}')
                next_plain += 1
            else:
                slots.append(f'"{name}":{{{next_made}}}')
                next_made += 1
        body = ",".join(slots)
        with_cong = self.mode != "compatible" and bool(info.get("cong"))
        if self.mode == "compatible":
            netlink_text = f"{{{{{body}}}}}"
        else:
            cong = f'"cong":{{{{"algorithm":{{{next_made}}}}}}},' if with_cong else ""
            netlink_text = f'{{{{{cong}"tcpInfo":{{{{{body}}}}}}}}}'
        template = f'"usage":{{{{"received":{{0}},"sent":{{1}}}}}},"netlink":{netlink_text}'
        fields = itemgetter(*plain) if len(plain) > 1 else (lambda i: tuple(i[f] for f in plain))

        def values(i: dict[str, Any]) -> tuple[Any, ...]:
            head = (i.get("bytes_received", 0), i.get("bytes_acked", 0), *fields(i),
                    *[_json_value(m(i)) for m in made])
            return (*head, _json_value(i["cong"])) if with_cong else head

        return template, values
