"""Flow events as firefly datagrams (UDP, by convention port 10514).

Each datagram is one firefly, bare JSON or behind an RFC 5424 syslog header;
:func:`~flowlabel.events.parse_firefly` understands both. A firefly that is
invalid JSON only because its application name holds an unescaped quote (as
XRootD 5.5 sends them) is repaired, applied and counted. With a relay, every
valid datagram is also handed on, unchanged, to be forwarded to other receivers.

Datagrams from senders outside ``allowedSenders`` are dropped and counted. The
socket's receive buffer is sized for bursts (``receiveBuffer``; beyond the
kernel's ``net.core.rmem_max`` only with CAP_NET_ADMIN); the size obtained is
logged and exported, as is the kernel's count of datagrams it dropped because
that buffer was full.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from ..config import FireflyListener
from ..events import EventError, parse_firefly
from ..logs import RateLimitedLog
from ..metrics import Family
from . import EventSink

if TYPE_CHECKING:
    from ..relay import FireflyRelay

__all__ = ["FireflySource", "kernel_drops"]

log = logging.getLogger(__name__)

SOURCE = "firefly"
#: Datagrams read per wake-up before other sources get their turn.
BATCH = 1024
#: The largest UDP payload; longer ones cannot arrive.
MAX_DATAGRAM = 65535
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

def _peer(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def allowed_networks(config: FireflyListener) -> list[Any] | None:
    """The sender networks the listener accepts; None for any.

    Without ``allowedSenders``, a listener bound to loopback accepts loopback only.
    """
    if config.allowed_senders is not None:
        return [ipaddress.ip_network(text, strict=False) for text in config.allowed_senders]
    if ipaddress.ip_address(config.bind_address).is_loopback:
        return [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
    return None


class FireflySource:
    """Listens for fireflies as ``config`` says (``bindPort`` 0 picks a free port).

    Each wake-up drains what the socket holds (up to :data:`BATCH` datagrams)
    and submits the events as one batch: a burst then costs one map update and
    one journal write per batch instead of per datagram.
    """

    def __init__(
        self, config: FireflyListener, sink: EventSink, *, relay: FireflyRelay | None = None
    ) -> None:
        self.config = config
        self.address = config.bind_address
        self.port = config.bind_port
        self.max_size = config.buffer_size
        self.receive_buffer = 0
        self.repaired = 0
        self.refused = 0
        self._allowed = allowed_networks(config)
        self._sink = sink
        self._relay = relay
        self._sock: socket.socket | None = None
        self._inode = 0
        self._buf = bytearray(MAX_DATAGRAM)
        self._repairs = RateLimitedLog(log, 10, "repaired fireflies")
        self._refusals = RateLimitedLog(log, 10, "fireflies from senders not allowed")
        self._checked: dict[str, bool] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.receive_buffer = _grow_receive_buffer(sock, self.config.receive_buffer)
            sock.bind((self.address, self.port))
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._drain)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._inode = os.fstat(sock.fileno()).st_ino
        self.port = sock.getsockname()[1]
        if self.receive_buffer < self.config.receive_buffer:
            log.warning("the firefly listener's receive buffer is %d bytes, not the %d asked for: the kernel "
                        "caps it at net.core.rmem_max without CAP_NET_ADMIN", self.receive_buffer,
                        self.config.receive_buffer)

    async def stop(self) -> None:
        if self._relay is not None:
            self._relay.stop()
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _allowed_sender(self, host: str) -> bool:
        known = self._checked.get(host)
        if known is None:
            address = ipaddress.ip_address(host.partition("%")[0])
            if address.version == 6 and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            assert self._allowed is not None
            known = any(address in network for network in self._allowed)
            if len(self._checked) > 65536:
                self._checked.clear()
            self._checked[host] = known
        return known

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
            if self._allowed is not None and not self._allowed_sender(addr[0]):
                self.refused += 1
                self._refusals.warning("firefly from %s dropped: not in plugins.firefly.allowedSenders",
                                       _peer(addr))
                continue
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
        return [
            Family.single("flowlabel_fireflies_repaired_total", "counter",
                          "Received fireflies that were invalid JSON only because of an unescaped "
                          "application name, repaired and applied", self.repaired),
            Family.single("flowlabel_fireflies_refused_senders_total", "counter",
                          "Fireflies dropped because their sender is not in allowedSenders", self.refused),
            Family.single("flowlabel_firefly_receive_buffer_bytes", "gauge",
                          "The firefly socket's receive buffer, as the kernel granted it",
                          self.receive_buffer),
            Family.single("flowlabel_firefly_kernel_drops_total", "counter",
                          "Fireflies the kernel dropped because the receive buffer was full",
                          kernel_drops(self._inode) if self._inode else 0),
        ]


def _grow_receive_buffer(sock: socket.socket, size: int) -> int:
    """A receive buffer of ``size`` bytes for bursts (beyond net.core.rmem_max only with
    CAP_NET_ADMIN); the size obtained, as the kernel counts it (half what getsockopt says)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    # The kernel doubles the value for its bookkeeping overhead and reports the doubled one.
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2


def kernel_drops(inode: int) -> int:
    """The kernel's drop count for the UDP socket with this inode (/proc/self/net/udp and udp6)."""
    wanted = str(inode)
    for name in ("/proc/self/net/udp", "/proc/self/net/udp6"):
        try:
            with open(name) as table:
                next(table)
                for line in table:
                    fields = line.split()
                    if len(fields) > 12 and fields[9] == wanted:
                        return int(fields[12])
        except (OSError, StopIteration, ValueError):
            continue
    return 0
