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

:func:`members` builds them as objects (for end fireflies); :func:`program`
tells csrc/ongoing.c how to write the same members as JSON text, for the ongoing
fireflies of every flow each period.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from . import tcpinfo

__all__ = ["COMPATIBLE", "FULL", "LEAN", "MODES", "Program", "members", "netlink", "program", "usage"]

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
_MS = 1000
_STATE_NAMES = {1: "established", 2: "syn-sent", 3: "syn-recv", 4: "fin-wait-1", 5: "fin-wait-2",
                6: "time-wait", 7: "unconnected", 8: "close-wait", 9: "last-ack", 10: "listening",
                11: "closing"}
#: flowd's names, in flowd-go's order. Each is the tcp_info field of that name, shown as it is, but
#: for those in _COMPATIBLE_MADE.
COMPATIBLE = (
    "state", "pmtu", "retrans", "ato", "rto", "snd_wscale", "rcv_wscale", "snd_mss", "snd_cwnd",
    "snd_ssthresh", "rtt", "rttvar", "rcv_rtt", "rcv_space", "opts", "last_data_sent", "rcv_ssthresh",
    "segs_in", "segs_out", "data_segs_in", "data_segs_out", "lost", "notsent_bytes", "rcv_mss", "pacing_rate",
    "retransmits", "min_rtt", "rwnd_limited", "max_pacing_rate", "probes", "reordering", "last_data_recv",
    "bytes_received", "fackets",
    "last_ack_recv", "last_ack_sent", "unacked", "sacked", "bytes_acked", "delivery_rate_app_limited",
    "delivery_rate", "sndbuf_limited", "ca_state", "busy_time", "total_retrans", "advmss", "backoff",
)
#: flowd's values made from a field: name -> (tcp_info field, how, a key of _MADE).
_COMPATIBLE_MADE = {
    "state": ("state", "state"), "ato": ("ato", "ms"), "rto": ("rto", "rto_ms"),
    "snd_ssthresh": ("snd_ssthresh", "ssthresh"), "rtt": ("rtt", "ms"), "rttvar": ("rttvar", "ms"),
    "rcv_rtt": ("rcv_rtt", "ms"), "opts": ("options", "options"),
}
#: How flowd makes a value from its tcp_info field: times in whole milliseconds (the kernel's
#: initial 3 s retransmission timeout as 0), an "infinite" slow-start threshold as 0, the state by
#: name and the options as a list. csrc/ongoing.c writes the arithmetic ones (the kinds of the same
#: names); the state and options, one byte each, go to it as tables of every value's text.
_MADE: dict[str, Callable[[int], Any]] = {
    "ms": lambda v: v // _MS,
    "rto_ms": lambda v: 0 if v == 3_000_000 else v // _MS,
    "ssthresh": lambda v: v if v < 0xFFFF else 0,
    "state": lambda v: _STATE_NAMES.get(v, "invalid"),
    "options": lambda v: [name for bit, name in ((1, "ts"), (2, "sack"), (8, "ecn")) if v & bit],
}
_TABLES = ("state", "options")


def _compatible() -> list[tuple[str, str, str | None]]:
    """(name, tcp_info field, how its value is made or None) of each of flowd's members."""
    return [(name, *_COMPATIBLE_MADE.get(name, (name, None))) for name in COMPATIBLE]
#: The modes, as flowd-go names them; any other value is the full shape.
MODES = ("lean", "compatible")


def _renamed(info: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    return dict(sorted((names[field], value) for field, value in info.items() if field in names))


def netlink(info: dict[str, Any], mode: str) -> dict[str, Any]:
    """The ``netlink`` member of a firefly for the ``tcp_info`` fields ``info`` (and its ``cong``)."""
    if mode == "compatible":
        return {name: info[field] if made is None else _MADE[made](info[field])
                for name, field, made in _compatible() if field in info}
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


#: A members program (csrc/ongoing.h): the text with a mark for each field, the fields as
#: (kind, argument, tcp_info offset), and the value tables (the texts of a one-byte field's values).
Program = tuple[str, list[tuple[str, int, int]], list[list[str]]]


def program(mode: str, info_size: int, marks: tuple[str, str, str]) -> Program:
    """The members program that writes what :func:`members` would for a ``tcp_info`` of
    ``info_size`` bytes (the running kernel's), in ``mode``'s shape, as JSON text. Fields past
    ``info_size`` are left out, as :mod:`flowlabel.tcpinfo` leaves them out of its dicts.
    ``marks`` are the program's: where a field goes, and where the part that only a socket with a
    congestion control gets begins and ends."""
    field_mark, cong_begin, cong_end = marks
    fields: list[tuple[str, int, int]] = []
    tables: list[list[str]] = []

    def field(name: str, made: str | None = None) -> str:
        kind, arg, offset = tcpinfo.reading(name)
        if made in _TABLES:
            kind, arg = "table", len(tables)
            tables.append([json.dumps(_MADE[made](value), separators=(",", ":")) for value in range(256)])
        elif made is not None:
            kind = made
        fields.append((kind, arg, offset))
        return field_mark

    def fits(name: str) -> bool:
        return tcpinfo.reading(name)[2] + tcpinfo.width(name) <= info_size

    # The fields are listed in the order their marks come in the text.
    usage_text = ",".join(f'"{key}":{field(name) if fits(name) else "0"}'
                          for key, name in (("received", "bytes_received"), ("sent", "bytes_acked")))
    if mode == "compatible":
        body = ",".join(f'"{name}":{field(source, made)}'
                        for name, source, made in _compatible() if fits(source))
        netlink_text = f"{{{body}}}"
    else:
        fields.append(("cong", 0, 0))
        cong = f'{cong_begin}"cong":{{"algorithm":{field_mark}}},{cong_end}'
        shown = LEAN if mode == "lean" else FULL
        body = ",".join(f'"{name}":{field(source)}'
                        for name, source in sorted((shown[f], f) for f in shown if fits(f)))
        netlink_text = f'{{{cong}"tcpInfo":{{{body}}}}}'
    return f'"usage":{{{usage_text}}},"netlink":{netlink_text}', fields, tables
