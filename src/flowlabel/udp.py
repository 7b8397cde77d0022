"""Sending datagrams to configured peers: collectors and relay receivers.

Peers are named by address or host name, with a port; a name is resolved once,
when the sender starts, and one that does not resolve is a configuration error
naming where it was configured.
"""

from __future__ import annotations

import logging
import socket

from .config import ConfigError
from .logs import RateLimitedLog

__all__ = ["Target", "UdpSender", "resolve"]

log = logging.getLogger(__name__)

#: (address family, socket address)
Target = tuple[int, tuple[str, int]]


def resolve(host: str, port: int, path: str) -> Target:
    """The socket address of ``host``:``port``; ``path`` names the configuration key in errors."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(path, f"cannot resolve {host!r}: {exc}") from None
    family, _, _, _, address = infos[0]
    return int(family), (str(address[0]), int(address[1]))


def target_of(address: str, port: int) -> Target:
    """The target for an address literal (a flow's destination)."""
    return (socket.AF_INET6 if ":" in address else socket.AF_INET), (address, port)


class UdpSender:
    """Non-blocking UDP sockets, one per address family; send errors are counted and logged."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.sent = 0
        self.errors = 0
        self._sockets: dict[int, socket.socket] = {}
        self._error_log = RateLimitedLog(log, 10, f"{what} send errors")

    def send(self, payload: bytes, target: Target, about: object) -> bool:
        family, address = target
        sock = self._sockets.get(family)
        try:
            if sock is None:
                sock = self._sockets[family] = socket.socket(family, socket.SOCK_DGRAM)
                sock.setblocking(False)
            sock.sendto(payload, address)
        except OSError as exc:
            self.errors += 1
            self._error_log.warning("%s for %s to %s port %d not sent: %s", self.what, about, address[0],
                                    address[1], exc)
            return False
        self.sent += 1
        return True

    def fail(self, message: str, *args: object, count: int = 1) -> None:
        """Count ``count`` datagrams that were not sent (or not even written), and log it once."""
        self.errors += count
        self._error_log.warning(message, *args)

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
