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
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .flow import Flow

__all__ = ["TcpStats", "of_flow", "sweep"]

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_INFO = 2
_NLMSGHDR = struct.Struct("=IHHII")
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

# (name, offset in struct tcp_info, format): the kernel's uapi layout (linux/tcp.h).
_FIELDS = (
    ("state", 0, "B"),
    ("snd_mss", 16, "I"),
    ("lost", 32, "I"),
    ("rtt_us", 68, "I"),
    ("rttvar_us", 72, "I"),
    ("snd_ssthresh", 76, "I"),
    ("snd_cwnd", 80, "I"),
    ("total_retrans", 100, "I"),
    ("pacing_rate", 104, "Q"),
    ("bytes_acked", 120, "Q"),
    ("bytes_received", 128, "Q"),
    ("min_rtt_us", 148, "I"),
    ("delivery_rate", 160, "Q"),
    ("bytes_sent", 200, "Q"),
)


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


def _full_layout() -> struct.Struct:
    """One struct for every field of _FIELDS, with padding between them (a single unpack)."""
    fmt, at = "=", 0
    for _, offset, code in _FIELDS:
        fmt += f"{offset - at}x" if offset > at else ""
        fmt += code
        at = offset + struct.calcsize("=" + code)
    return struct.Struct(fmt)


_FULL = _full_layout()


def _unpack(buffer: bytes | bytearray, at: int, size: int) -> TcpStats:
    """The fields of the ``tcp_info`` of ``size`` bytes at ``at`` in ``buffer``."""
    if size >= _FULL.size:
        state, *rest = _FULL.unpack_from(buffer, at)
        return TcpStats(STATES.get(state, str(state)), *rest)
    values: list[object] = []
    for name, offset, code in _FIELDS:
        width = struct.calcsize("=" + code)
        value = struct.unpack_from("=" + code, buffer, at + offset)[0] if offset + width <= size else None
        values.append(STATES.get(value, str(value)) if name == "state" and value is not None else value)
    return TcpStats(*values)  # type: ignore[arg-type]


Socket = tuple[bytes, bytes, int, int]  # local address, remote address, local port, remote port


def sweep(family: int = socket.AF_INET6) -> dict[Socket, TcpStats]:
    """The statistics of every open TCP socket of ``family`` in this network namespace."""
    found: dict[Socket, TcpStats] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.bind((0, 0))
        request = _REQUEST.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), _OPEN_STATES)
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY,
                                NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
        nl.send(header + request)
        buffer = bytearray(1 << 17)
        while True:
            size = nl.recv_into(buffer)
            offset = 0
            while offset + _NLMSGHDR.size <= size:
                length, kind, _, _, _ = _NLMSGHDR.unpack_from(buffer, offset)
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", buffer, offset + _NLMSGHDR.size)[0]
                    raise OSError(code, f"sock_diag: {os.strerror(code)}")
                body = offset + _NLMSGHDR.size
                sport, dport, src, dst = _SOCKET_ID.unpack_from(buffer, body)
                attr = body + _DIAG_MSG_SIZE
                end = offset + length
                while attr + _RTATTR.size <= end:
                    attr_len, attr_type = _RTATTR.unpack_from(buffer, attr)
                    if attr_len < _RTATTR.size:
                        break
                    if attr_type == INET_DIAG_INFO:
                        found[src, dst, sport, dport] = _unpack(buffer, attr + _RTATTR.size,
                                                                attr_len - _RTATTR.size)
                        break
                    attr += (attr_len + 3) & ~3
                offset += (length + 3) & ~3


def of_flow(sockets: dict[Socket, TcpStats], flow: Flow) -> TcpStats | None:
    """The statistics of the local socket of a TCP flow, announced in either orientation."""
    if flow.protocol != "tcp" or flow.src.version != 6:
        return None
    src, dst = flow.src.packed, flow.dst.packed
    return sockets.get((src, dst, flow.sport, flow.dport)) or sockets.get((dst, src, flow.dport, flow.sport))
