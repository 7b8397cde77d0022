"""Flow events as firefly datagrams (UDP, by convention port 10514).

Each datagram is one firefly, bare JSON or behind an RFC 5424 syslog header;
:func:`~flowlabel.events.parse_firefly` understands both. A firefly that is
invalid JSON only because its application name holds an unescaped quote (as
XRootD 5.5 sends them) is repaired, applied and counted. With a relay, every
valid datagram is also handed on, unchanged, to be forwarded to collectors.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any

from ..events import EventError, parse_firefly
from ..logs import RateLimitedLog
from ..metrics import Family
from . import EventSink

if TYPE_CHECKING:
    from ..relay import FireflyRelay

__all__ = ["FireflySource"]

log = logging.getLogger(__name__)

SOURCE = "firefly"
#: Datagrams read per wake-up before other sources get their turn.
BATCH = 256
#: The largest UDP payload; longer ones cannot arrive.
MAX_DATAGRAM = 65535
RECEIVE_BUFFER = 4 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def _peer(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class FireflySource:
    """Listens for fireflies on ``address``:``port`` (``port`` 0 picks a free one).

    Each wake-up drains what the socket holds (up to :data:`BATCH` datagrams)
    and submits the events as one batch: a burst then costs one map update and
    one journal write per batch instead of per datagram.
    """

    def __init__(
        self,
        address: str,
        port: int,
        sink: EventSink,
        *,
        max_size: int = 4096,
        relay: FireflyRelay | None = None,
    ) -> None:
        self.address = address
        self.port = port
        self.max_size = max_size
        self.repaired = 0
        self._sink = sink
        self._relay = relay
        self._sock: socket.socket | None = None
        self._buf = bytearray(MAX_DATAGRAM)
        self._repairs = RateLimitedLog(log, 10, "repaired fireflies")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            _grow_receive_buffer(sock)
            sock.bind((self.address, self.port))
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._drain)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]

    async def stop(self) -> None:
        if self._relay is not None:
            self._relay.stop()
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _drain(self) -> None:
        sock, buf = self._sock, self._buf
        if sock is None:
            return
        events = []
        relayed: list[bytes] = []
        for _ in range(BATCH):
            try:
                size, addr = sock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # ICMP errors for earlier sends; a listener has nothing to do about them.
                log.debug("firefly listener: %s", exc)
                break
            if size > self.max_size:
                self._sink.reject(SOURCE, f"datagram of {size} bytes from {_peer(addr)} is larger "
                                          f"than {self.max_size} bytes")
                continue
            datagram = bytes(buf[:size])
            try:
                events.append(parse_firefly(datagram, on_repair=self._repaired))
            except EventError as exc:
                self._sink.reject(SOURCE, f"{exc} in datagram from {_peer(addr)}")
                continue
            if self._relay is not None:
                relayed.append(datagram)
        if events:
            self._sink.submit(events, SOURCE)
        if relayed:
            self._relay(relayed)  # type: ignore[misc]

    def _repaired(self, why: str) -> None:
        self.repaired += 1
        self._repairs.warning("repaired a firefly: %s", why)

    def families(self) -> list[Family]:
        return [Family.single("flowlabel_fireflies_repaired_total", "counter",
                              "Received fireflies that were invalid JSON only because of an unescaped "
                              "application name, repaired and applied", self.repaired)]


def _grow_receive_buffer(sock: socket.socket) -> None:
    """A receive buffer for bursts; beyond net.core.rmem_max only with CAP_NET_ADMIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
