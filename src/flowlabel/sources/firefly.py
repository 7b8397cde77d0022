"""Flow events as firefly datagrams (UDP, by convention port 10514).

Each datagram is one firefly, bare JSON or behind an RFC 5424 syslog header;
:func:`~flowlabel.events.parse_firefly` understands both.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from ..events import EventError, parse_firefly
from . import EventSink

__all__ = ["FireflySource"]

log = logging.getLogger(__name__)

SOURCE = "firefly"


def _peer(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, source: FireflySource) -> None:
        self._source = source

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._source.received(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier sends; a listener has nothing to do about them.
        log.debug("firefly listener: %s", exc)


class FireflySource:
    """Listens for fireflies on ``address``:``port`` (``port`` 0 picks a free one)."""

    def __init__(self, address: str, port: int, sink: EventSink, *, max_size: int = 4096) -> None:
        self.address = address
        self.port = port
        self.max_size = max_size
        self._sink = sink
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.address, self.port), family=family
        )
        self._transport = transport
        self.port = self._transport.get_extra_info("sockname")[1]

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def received(self, data: bytes, addr: Any) -> None:
        if len(data) > self.max_size:
            self._sink.reject(SOURCE, f"datagram of {len(data)} bytes from {_peer(addr)} is larger "
                                      f"than {self.max_size} bytes")
            return
        try:
            event = parse_firefly(data)
        except EventError as exc:
            self._sink.reject(SOURCE, f"{exc} in datagram from {_peer(addr)}")
            return
        self._sink.submit([event], SOURCE)
