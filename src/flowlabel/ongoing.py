"""The round of ongoing fireflies, run by the extension (csrc/ongoing.h).

Every enrichment period, each enriched TCP flow with a socket here gets a
firefly with its connection's statistics. For 10,000 flows that was 150 ms of
CPU a round in Python, most of it building and unpacking per-socket objects;
the extension parses the sock_diag dump in place, matches each socket to its
flow, writes the firefly into the datagram and sends it with sendmmsg.

:class:`OngoingRound` holds the flows (their fireflies written but for the
round's time and statistics, by :meth:`~flowlabel.events.OngoingFirefly.template`)
and runs the round: :meth:`~OngoingRound.dump`, then :meth:`~OngoingRound.send`
in steps.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any, NamedTuple

from . import enrichment, tcpinfo
from .bpf.ext import extension
from .udp import Target

__all__ = ["OngoingRound", "Sent", "address_of", "sockaddr"]

#: A flow's ends in its key: source and destination address, source and destination port.
ENDS = slice(0, 36)


class Sent(NamedTuple):
    """What a step did: fireflies written, and not written for being longer than a datagram;
    datagrams sent and not sent, and about the last that was not: its errno and receiver (the
    collector's index, or the flow's destination address and port)."""

    written: int
    too_long: int
    sent: int
    errors: int
    last_errno: int
    last_receiver: int | tuple[str, int]


def sockaddr(target: Target) -> bytes:
    """``target`` as a struct sockaddr_in or sockaddr_in6 (a scoped IPv6 address keeps its scope)."""
    family, (address, port) = target
    head = struct.pack("=H", family) + struct.pack("!H", port)
    if family == socket.AF_INET:
        return head + socket.inet_pton(family, address) + bytes(8)
    scope = 0
    if "%" in address:
        found = socket.getaddrinfo(address, port, family, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST)
        scope = int(found[0][4][3])  # type: ignore[misc]
        address = address.partition("%")[0]
    return head + bytes(4) + socket.inet_pton(family, address) + struct.pack("=I", scope)


def address_of(packed: bytes) -> tuple[str, int]:
    """The address and port of a struct sockaddr_in or sockaddr_in6 (:func:`sockaddr`'s inverse)."""
    (family,) = struct.unpack_from("=H", packed)
    (port,) = struct.unpack_from("!H", packed, 2)
    if family == socket.AF_INET:
        return socket.inet_ntop(family, packed[4:8]), port
    return socket.inet_ntop(socket.AF_INET6, packed[8:24]), port


def _check(what: str, result: int) -> int:
    if result < 0:
        raise OSError(-result, f"{what}: {os.strerror(-result)}")
    return result


class OngoingRound:
    """The flows of the ongoing fireflies and their round, with members in ``mode``'s shape,
    sent to ``collectors`` (and to each flow's destination where it gives one). ``info_size`` is
    the size of tcp_info the members are written for, the running kernel's unless given.

    Raises :class:`~flowlabel.errors.NotSupportedError` without the extension and
    OSError when the UDP sockets cannot be made."""

    def __init__(self, mode: str, collectors: list[Target], info_size: int | None = None) -> None:
        self._ffi, self._lib = ffi, lib = extension()
        handle = lib.fl_ongoing_new()
        if handle == ffi.NULL:
            raise OSError(ffi.errno, "ongoing fireflies: cannot set up")
        self._handle: Any = ffi.gc(handle, lib.fl_ongoing_free)
        #: The marks of a flow's template: where the header, the current time and the members go.
        self.marks = (chr(lib.FL_MARK_HEADER), chr(lib.FL_MARK_CURRENT), chr(lib.FL_MARK_MEMBERS))
        if info_size is None:
            info_size = tcpinfo.info_size()
        text, fields, tables = enrichment.program(
            mode, info_size, (chr(lib.FL_MARK_FIELD), chr(lib.FL_MARK_CONG_BEGIN), chr(lib.FL_MARK_CONG_END)))
        kinds = ffi.new("struct fl_field[]", max(1, len(fields)))
        for n, (kind, arg, offset) in enumerate(fields):
            kinds[n].kind, kinds[n].arg, kinds[n].offset = getattr(lib, "FL_" + kind.upper()), arg, offset
        width = lib.FL_TABLE_TEXT
        blob = b"".join(value.encode("ascii").ljust(width, b"\0")[:width]
                        for table in tables for value in table)
        program = text.encode("ascii")
        _check("ongoing fireflies", lib.fl_ongoing_program(
            self._handle, program, len(program), kinds, len(fields), blob, len(tables), info_size))
        addresses = [sockaddr(target) for target in collectors]
        lens = ffi.new("__u32[]", [len(a) for a in addresses] or [0])
        _check("ongoing fireflies", lib.fl_ongoing_collectors(self._handle, b"".join(addresses), lens,
                                                             len(addresses)))
        self._info = ffi.new("char[]", lib.FL_INFO_MAX)
        self._cong = ffi.new("char[]", lib.FL_CONG_MAX)
        self._sent = ffi.new("struct fl_ongoing_sent *")

    def __len__(self) -> int:
        return int(self._lib.fl_ongoing_count(self._handle))

    def put(self, key: bytes, template: str, destination: Target | None) -> None:
        """Registers the flow of ``key``: its firefly template and where its own firefly goes
        besides the collectors. A registered flow's are replaced, and it gets no firefly in the
        round under way."""
        text = template.encode("ascii")
        dest = sockaddr(destination) if destination is not None else b""
        _check("ongoing fireflies", self._lib.fl_ongoing_put(self._handle, key[ENDS], text, len(text), dest,
                                                            len(dest)))

    def drop(self, key: bytes) -> bool:
        """Forgets the flow of ``key``; whether it was registered."""
        return bool(self._lib.fl_ongoing_drop(self._handle, key[ENDS]) == 0)

    def last(self, key: bytes) -> dict[str, Any] | None:
        """The flow's ``tcp_info`` fields and ``cong`` as the last round read them; None if that
        round found no socket of the flow."""
        size = self._lib.fl_ongoing_last(self._handle, key[ENDS], self._info, self._cong)
        if size < 0:
            return None
        info = tcpinfo.info_dict(self._ffi.buffer(self._info, size), 0, size)
        cong = self._ffi.string(self._cong).decode("ascii", "replace")
        info["cong"] = cong or None
        return info

    def members(self, info: bytes, cong: str | None) -> str:
        """The members text a round writes for the ``tcp_info`` bytes ``info`` and ``cong``."""
        out = self._ffi.new("char[]", self._lib.FL_FIREFLY_MAX)
        size = _check("ongoing fireflies", self._lib.fl_ongoing_members(
            self._handle, info, len(info), (cong or "").encode(), out, self._lib.FL_FIREFLY_MAX))
        return bytes(self._ffi.buffer(out, size)).decode("ascii")

    def dump(self) -> int:
        """Starts a round: reads every open IPv6 TCP socket's statistics; how many flows have one."""
        return _check("ongoing fireflies: sock_diag", self._lib.fl_ongoing_dump(self._handle))

    def send(self, header: str, current: str, count: int) -> tuple[int, Sent]:
        """Writes and sends the fireflies of the round's next ``count`` flows at time ``current``
        (written form) behind ``header``: how many flows remain, and what was done."""
        left = _check("ongoing fireflies", self._lib.fl_ongoing_send(
            self._handle, header.encode("ascii"), current.encode("ascii"), count, self._sent))
        s = self._sent
        receiver: int | tuple[str, int] = s.last_receiver
        if s.errors and s.last_receiver < 0:
            receiver = address_of(bytes(s.last_address))
        return left, Sent(s.written, s.too_long, s.sent, s.errors, s.last_errno, receiver)
