"""The kernel's TCP statistics of every open IPv6 TCP socket, in one sock_diag dump.

One request (``SOCK_DIAG_BY_FOCUS`` dump, ``INET_DIAG_INFO``) returns a
``struct tcp_info`` per socket; only the fields below are unpacked, with
``struct`` straight from the netlink buffers, so that a sweep of 10,000 sockets
stays cheap. Older kernels send a shorter ``tcp_info``: fields past its end
read as None.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from .flow import FLOW_KEY

if TYPE_CHECKING:
    from .flow import Flow

__all__ = ["TCP_INFO_FIELDS", "TcpStats", "info_dict", "info_size", "of_ends", "of_flow", "of_key", "reading",
           "sweep", "sweep_info", "width"]

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_INFO = 2
INET_DIAG_CONG = 4
_NLMSGHDR = struct.Struct("=IHHII")
_LENGTH_KIND = struct.Struct("=IH")
# inet_diag_req_v2: family, protocol, ext, pad, states, then an empty inet_diag_sockid (48 bytes).
_REQUEST = struct.Struct("=BBBxI48x")
# inet_diag_msg (72 bytes): family, state, timer, retrans, then the socket id: sport, dport
# (network order), src, dst; then the interface, cookie, expires, queues, uid and inode.
_DIAG_MSG_SIZE = 72
_SOCKET_ID = struct.Struct("!4xHH16s16s")
_RTATTR = struct.Struct("=HH")
# TCP states that still carry a connection: all but LISTEN, CLOSE and TIME_WAIT.
_OPEN_STATES = sum(1 << state for state in (1, 2, 3, 4, 5, 8, 9, 11))
STATES = {1: "established", 2: "syn_sent", 3: "syn_recv", 4: "fin_wait1", 5: "fin_wait2", 6: "time_wait",
          7: "close", 8: "close_wait", 9: "last_ack", 10: "listen", 11: "closing"}


#: Every field of struct tcp_info (linux/tcp.h) after its first 8 bytes, in order, by its name
#: without ``tcpi_``; the first 8 bytes are unpacked by :func:`info_dict`.
TCP_INFO_FIELDS = (
    ("rto", "I"), ("ato", "I"), ("snd_mss", "I"), ("rcv_mss", "I"), ("unacked", "I"), ("sacked", "I"),
    ("lost", "I"), ("retrans", "I"), ("fackets", "I"), ("last_data_sent", "I"), ("last_ack_sent", "I"),
    ("last_data_recv", "I"), ("last_ack_recv", "I"), ("pmtu", "I"), ("rcv_ssthresh", "I"), ("rtt", "I"),
    ("rttvar", "I"), ("snd_ssthresh", "I"), ("snd_cwnd", "I"), ("advmss", "I"), ("reordering", "I"),
    ("rcv_rtt", "I"), ("rcv_space", "I"), ("total_retrans", "I"), ("pacing_rate", "Q"),
    ("max_pacing_rate", "Q"), ("bytes_acked", "Q"), ("bytes_received", "Q"), ("segs_out", "I"),
    ("segs_in", "I"), ("notsent_bytes", "I"), ("min_rtt", "I"), ("data_segs_in", "I"),
    ("data_segs_out", "I"), ("delivery_rate", "Q"), ("busy_time", "Q"), ("rwnd_limited", "Q"),
    ("sndbuf_limited", "Q"), ("delivered", "I"), ("delivered_ce", "I"), ("bytes_sent", "Q"),
    ("bytes_retrans", "Q"), ("dsack_dups", "I"), ("reord_seen", "I"), ("rcv_ooopack", "I"), ("snd_wnd", "I"),
)
_HEAD = struct.Struct("=8B")


_ALL = struct.Struct("=8B" + "".join(code for _, code in TCP_INFO_FIELDS))
_ALL_NAMES = tuple(name for name, _ in TCP_INFO_FIELDS)


def _field_offsets() -> dict[str, tuple[int, str]]:
    """Where each named tcp_info field is: (offset, struct code); the bit fields are left out."""
    offsets = {"state": (0, "B"), "ca_state": (1, "B"), "retransmits": (2, "B"), "probes": (3, "B"),
               "backoff": (4, "B"), "options": (5, "B")}
    at = 8
    for name, code in TCP_INFO_FIELDS:
        offsets[name] = (at, code)
        at += struct.calcsize("=" + code)
    return offsets


_OFFSETS = _field_offsets()
#: The fields inside a byte: (byte's offset, what to take: its low or high four bits, bit 0, bits 1-2).
_BIT_FIELDS = {"snd_wscale": (6, "low_nibble"), "rcv_wscale": (6, "high_nibble"),
               "delivery_rate_app_limited": (7, "bit"), "fastopen_client_fail": (7, "bits_1_2")}
_KINDS = {"B": "u8", "I": "u32", "Q": "u64"}


def reading(name: str) -> tuple[str, int, int]:
    """How csrc/ongoing.c reads the tcp_info field ``name``: (kind, argument, offset); KeyError for
    names that are not fields."""
    if name in _BIT_FIELDS:
        offset, kind = _BIT_FIELDS[name]
        return kind, 0, offset
    offset, code = _OFFSETS[name]
    return _KINDS[code], 0, offset


def width(name: str) -> int:
    """The bytes the field ``name`` takes in tcp_info (1 for those inside a byte)."""
    return 1 if name in _BIT_FIELDS else struct.calcsize("=" + _OFFSETS[name][1])


def info_size() -> int:
    """The size of the running kernel's struct tcp_info (what it writes for TCP_INFO), at most 512."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        return len(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 512))


def _struct_of(fields: list[tuple[int, str]]) -> struct.Struct:
    """One struct for tcp_info fields given as (offset, code) in offset order, padding between."""
    fmt, at = "=", 0
    for offset, code in fields:
        fmt += (f"{offset - at}x" if offset > at else "") + code
        at = offset + struct.calcsize("=" + code)
    return struct.Struct(fmt)


def info_dict(buffer: bytes | bytearray, at: int, size: int) -> dict[str, Any]:
    """Every field of the ``tcp_info`` of ``size`` bytes at ``at``; fields past its end are absent."""
    rest: list[int] = []
    if size >= _ALL.size:
        values = _ALL.unpack_from(buffer, at)
        head, rest = values[:8], list(values[8:])
    else:
        head = _HEAD.unpack_from(buffer, at)
        offset = 8
        for _, code in TCP_INFO_FIELDS:
            width = 4 if code == "I" else 8
            if offset + width > size:
                break
            rest.append(struct.unpack_from("=" + code, buffer, at + offset)[0])
            offset += width
    state, ca_state, retransmits, probes, backoff, options, wscale, flags = head
    info: dict[str, Any] = {
        "state": state, "ca_state": ca_state, "retransmits": retransmits, "probes": probes,
        "backoff": backoff, "options": options, "snd_wscale": wscale & 0xF, "rcv_wscale": wscale >> 4,
        "delivery_rate_app_limited": flags & 1, "fastopen_client_fail": (flags >> 1) & 3,
    }
    info.update(zip(_ALL_NAMES, rest))
    return info


class TcpStats(NamedTuple):
    """One socket's ``tcp_info``, in the kernel's units: microseconds, segments, bytes, bytes/s."""

    state: str
    snd_mss: int | None
    lost: int | None
    rtt_us: int | None
    rttvar_us: int | None
    snd_ssthresh: int | None
    snd_cwnd: int | None
    total_retrans: int | None
    pacing_rate: int | None
    bytes_acked: int | None
    bytes_received: int | None
    min_rtt_us: int | None
    delivery_rate: int | None
    bytes_sent: int | None

    def as_json(self) -> dict[str, Any]:
        return self._asdict()


#: The tcp_info field of each TcpStats field (TcpStats' times carry their unit in the name).
_STATS_SOURCES = ("state", "snd_mss", "lost", "rtt", "rttvar", "snd_ssthresh", "snd_cwnd", "total_retrans",
                  "pacing_rate", "bytes_acked", "bytes_received", "min_rtt", "delivery_rate", "bytes_sent")
#: (TcpStats field, offset in struct tcp_info, format), in offset order.
_FIELDS = tuple((name, *_OFFSETS[source]) for name, source in zip(TcpStats._fields, _STATS_SOURCES))
_FULL = _struct_of([(offset, code) for _, offset, code in _FIELDS])


def _unpack(buffer: bytes | bytearray, at: int, size: int) -> TcpStats:
    """The fields of the ``tcp_info`` of ``size`` bytes at ``at`` in ``buffer``."""
    if size >= _FULL.size:
        whole = _FULL.unpack_from(buffer, at)
        return tuple.__new__(TcpStats, (STATES.get(whole[0]) or str(whole[0]), *whole[1:]))
    values: list[Any] = []
    for name, offset, code in _FIELDS:
        width = struct.calcsize("=" + code)
        value = struct.unpack_from("=" + code, buffer, at + offset)[0] if offset + width <= size else None
        values.append(STATES.get(value, str(value)) if name == "state" and value is not None else value)
    return TcpStats(*values)


Socket = tuple[bytes, bytes, int, int]  # local address, remote address, local port, remote port
T = TypeVar("T")


def sweep(family: int = socket.AF_INET6) -> dict[Socket, TcpStats]:
    """The statistics of every open TCP socket of ``family`` in this network namespace."""
    found: dict[Socket, TcpStats] = {}
    _dump_stats(family, found)
    return found


def sweep_info(family: int = socket.AF_INET6) -> dict[Socket, dict[str, Any]]:
    """Every field of every open TCP socket's ``tcp_info``, and its congestion control as ``cong``."""
    found: dict[Socket, Any] = {}
    _dump(family, found)
    return found


def _messages(family: int, extensions: int) -> Iterator[tuple[bytearray, int, int]]:
    """(buffer, offset, length) of each inet_diag message of one dump of ``family``'s open TCP
    sockets with the attributes ``extensions`` asks for; the buffer is reused between reads."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.bind((0, 0))
        request = _REQUEST.pack(family, socket.IPPROTO_TCP, extensions, _OPEN_STATES)
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY,
                                NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
        nl.send(header + request)
        buffer = bytearray(1 << 17)
        unpack_head, header_size = _LENGTH_KIND.unpack_from, _NLMSGHDR.size
        while True:
            size = nl.recv_into(buffer)
            offset = 0
            while offset + header_size <= size:
                length, kind = unpack_head(buffer, offset)
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", buffer, offset + header_size)[0]
                    raise OSError(code, f"sock_diag: {os.strerror(code)}")
                yield buffer, offset, length
                offset += (length + 3) & ~3


def _attributes(buffer: bytearray, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload offset, payload length) of each attribute of the message at ``offset``."""
    attr, end, attr_size = offset + _NLMSGHDR.size + _DIAG_MSG_SIZE, offset + length, _RTATTR.size
    while attr + attr_size <= end:
        attr_len, attr_type = _RTATTR.unpack_from(buffer, attr)
        if attr_len < attr_size:
            return
        yield attr_type, attr + attr_size, attr_len - attr_size
        attr += (attr_len + 3) & ~3


def _key(buffer: bytearray, offset: int) -> Socket:
    sport, dport, src, dst = _SOCKET_ID.unpack_from(buffer, offset + _NLMSGHDR.size)
    return (src, dst, sport, dport)


def _dump_stats(family: int, found: dict[Socket, TcpStats]) -> None:
    """:func:`sweep`'s dump. Every message of a dump carries the same attributes in the same
    order (the kernel and the request decide them), so once the first message has shown where
    its tcp_info is, each next one of the same length is checked there and read with one unpack
    for the socket and one for the statistics: the parsing, not the kernel, is most of a sweep."""
    known_length, info_at, info_head = -1, 0, (0, 0)
    unpack_head, unpack_id, unpack_stats = _RTATTR.unpack_from, _SOCKET_ID.unpack_from, _FULL.unpack_from
    id_at, new, states = _NLMSGHDR.size, tuple.__new__, STATES
    for buffer, offset, length in _messages(family, 1 << (INET_DIAG_INFO - 1)):
        if length == known_length and unpack_head(buffer, offset + info_at - _RTATTR.size) == info_head:
            sport, dport, src, dst = unpack_id(buffer, offset + id_at)
            whole = unpack_stats(buffer, offset + info_at)
            state = states.get(whole[0]) or str(whole[0])
            found[(src, dst, sport, dport)] = new(TcpStats, (state, *whole[1:]))
            continue
        for attr_type, at, size in _attributes(buffer, offset, length):
            if attr_type == INET_DIAG_INFO:
                found[_key(buffer, offset)] = _unpack(buffer, at, size)
                if size >= _FULL.size:
                    known_length, info_at = length, at - offset
                    info_head = (size + _RTATTR.size, INET_DIAG_INFO)
                break


def _dump(family: int, found: dict[Socket, Any]) -> None:
    """:func:`sweep_info`'s dump: the dict of each tcp_info, and ``cong``.

    As in :func:`_dump_stats`, a message laid out as the last one read in full (same length,
    the same attribute headers where its tcp_info and congestion control were) is read at
    those offsets without walking its attributes."""
    extensions = 1 << (INET_DIAG_INFO - 1) | 1 << (INET_DIAG_CONG - 1)
    unpack = info_dict
    unpack_head, header = _RTATTR.unpack_from, _RTATTR.size
    known_length, info_at, info_size, cong_at = -1, 0, 0, 0
    info_head: tuple[int, int] | None = None
    cong_head: tuple[int, int] | None = None
    cong_text = struct.Struct("0s")
    names: dict[bytes, str] = {}
    for buffer, offset, length in _messages(family, extensions):
        if (length == known_length and unpack_head(buffer, offset + info_at - header) == info_head
                and (cong_head is None or unpack_head(buffer, offset + cong_at - header) == cong_head)):
            info = unpack(buffer, offset + info_at, info_size)
            if cong_head is None:
                info["cong"] = None
            else:
                raw = cong_text.unpack_from(buffer, offset + cong_at)[0]
                cong = names.get(raw)
                if cong is None:
                    cong = names[raw] = raw.split(b"\0")[0].decode()
                info["cong"] = cong
            found[_key(buffer, offset)] = info
            continue
        whole: dict[str, Any] | None = None
        cong = None
        cong_head = None
        for attr_type, at, size in _attributes(buffer, offset, length):
            if attr_type == INET_DIAG_INFO:
                whole = unpack(buffer, at, size)
                info_at, info_size, info_head = at - offset, size, (size + header, INET_DIAG_INFO)
            elif attr_type == INET_DIAG_CONG:
                cong = bytes(buffer[at : at + size]).split(b"\0")[0].decode()
                cong_at, cong_head = at - offset, (size + header, INET_DIAG_CONG)
                cong_text = struct.Struct(f"{size}s")
        known_length = length if whole is not None else -1
        if whole is not None:
            whole["cong"] = cong
            found[_key(buffer, offset)] = whole


def of_ends(sockets: dict[Socket, T], src: bytes, dst: bytes, sport: int, dport: int) -> T | None:
    """The statistics of the local socket of the TCP flow between these packed addresses and
    ports, announced in either orientation."""
    found = sockets.get((src, dst, sport, dport))
    # Not `or`: a sweep of no fields finds empty dicts, which are false.
    return found if found is not None else sockets.get((dst, src, dport, sport))


def of_key(sockets: dict[Socket, T], key: bytes) -> T | None:
    """:func:`of_ends` for a flow's packed key (:data:`flowlabel.flow.FLOW_KEY`)."""
    src, dst, sport, dport, proto = FLOW_KEY.unpack(key)
    return of_ends(sockets, src, dst, sport, dport) if proto == socket.IPPROTO_TCP else None


def of_flow(sockets: dict[Socket, T], flow: Flow) -> T | None:
    """:func:`of_ends` for a flow; None for UDP and IPv4 flows."""
    if flow.protocol != "tcp" or flow.src.version != 6:
        return None
    return of_ends(sockets, flow.src.packed, flow.dst.packed, flow.sport, flow.dport)
