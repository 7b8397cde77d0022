"""Flows that end by themselves: their TCP connection closed, or they carried no packet for long.

A storage system's end event can be lost (a firefly dropped in a burst, the
storage daemon restarted), and a flow marked forever fills the map. The
:class:`Reaper` finds the flows that must end anyway:

- TCP flows that leave this host from a local address end when their socket
  closes. The kernel tells (bpf/sockets.bpf.c, mode ``events``) where the
  watcher loads; else the socket table is polled (sock_diag, mode ``polling``)
  every second. Beside the events the poll runs every 30 seconds too, for the
  sockets that were open before the watcher was attached, which it never sees.
- Every other flow (UDP, TCP with no end on this host, and TCP when tracking is
  ``off``) ends after ``idleTimeout`` seconds without a packet, as the
  classifier records in the flow map (bpf/marker.h: ``seen`` and the epoch).

It returns ``(flow, reason)`` pairs, each flow by its packed key (as
announced: flowlabel.flow.flow_key); the daemon ends those flows as an end
event would, and counts each reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Callable

from .bpf.flowmap import epoch_now
from .errors import MarkerError
from .marker import Marker
from .metrics import Family

if TYPE_CHECKING:
    from .bpf.sockets import SocketWatch

__all__ = ["IDLE", "NO_SOCKET", "SOCKET_CLOSED", "Reaper", "reap"]

log = logging.getLogger(__name__)

# Why a flow ended by itself; the ``reason`` label values of the metrics.
SOCKET_CLOSED = "socket_closed"  # its TCP socket closed
NO_SOCKET = "no_socket"  # a TCP flow with a local end, but no such socket (e.g. it closed while down)
IDLE = "idle"  # no packet for idleTimeout seconds

#: Seconds between moves of the epoch clock at most: how finely idle time is told. A flow that
#: keeps sending records each new epoch, so its age never exceeds one tick; the tick is kept under a
#: quarter of the idle timeout.
TICK = 5.0
#: Seconds between polls of the socket table, without and beside the kernel's events.
POLL_INTERVAL = 1.0
POLL_BESIDE_EVENTS = 30.0
#: Seconds a new TCP flow may wait for its socket to appear before it counts as having none.
GRACE = 60.0


class Reaper:
    """Ends for the flows of ``marker``, per ``tracking`` ("auto", "events", "polling" or "off")."""

    def __init__(self, marker: Marker, idle_timeout: int, tracking: str) -> None:
        self.marker = marker
        self.idle_timeout = idle_timeout
        self.tracking = tracking
        self.mode = "off"
        self.watch: SocketWatch | None = None
        # Local TCP keys since when they are held without their socket seen (0: it was seen).
        self._pending: dict[bytes, float] = {}

    def start(self) -> str:
        """Start watching sockets; returns the mode that runs ("events", "polling" or "off").

        What the Marker holds now (the flows of the last run) has no grace: a flow whose
        socket is gone ends at the first poll.
        """
        if self.tracking in ("auto", "events"):
            from .bpf.sockets import SocketWatch

            try:
                self.watch = SocketWatch()
                self.mode = "events"
            except MarkerError as exc:
                if self.tracking == "events":
                    raise
                log.warning("TCP sockets are polled instead of watched: %s", exc)
                self.mode = "polling"
        elif self.tracking == "polling":
            self.mode = "polling"
        if self.mode != "off":
            self._pending = dict.fromkeys(self.marker.local_tcp_keys(), -GRACE)
        self.marker.set_epoch(epoch_now())
        return self.mode

    @property
    def fd(self) -> int | None:
        """A descriptor that becomes readable when the kernel told of sockets closing."""
        return self.watch.fd if self.watch is not None else None

    @property
    def tick(self) -> float:
        """Seconds between moves of the clock (and checks for idle flows)."""
        return min(TICK, max(0.5, self.idle_timeout / 4)) if self.idle_timeout else TICK

    @property
    def poll_interval(self) -> float | None:
        if self.mode == "off":
            return None
        return POLL_BESIDE_EVENTS if self.mode == "events" else POLL_INTERVAL

    # -- the three ways to end ----------------------------------------------------------------

    def sockets_closed(self) -> list[tuple[bytes, str]]:
        """The flows of the sockets the kernel told closed."""
        if self.watch is None:
            return []
        ended: list[tuple[bytes, str]] = []
        for closed in self.watch.take():
            if closed.established:
                continue
            key = self.marker.socket_key(closed.local, closed.remote, closed.local_port, closed.remote_port)
            for flow in self.marker.holders_of(key):
                ended.append((flow, SOCKET_CLOSED))
            self._pending.pop(key, None)
        return ended

    def poll(self, now: float | None = None) -> list[tuple[bytes, str]]:
        """The TCP flows with a local end whose socket is no longer open."""
        from .netif import open_tcp_sockets

        if self.mode == "off":
            return []
        now = time.monotonic() if now is None else now
        alive = {self.marker.socket_key(*sock) for sock in open_tcp_sockets()}
        pending = self._pending
        ended: list[tuple[bytes, str]] = []
        held = self.marker.local_tcp_keys()
        for key in held:
            since = pending.get(key)
            if key in alive:
                pending[key] = 0.0
            elif since is None:
                pending[key] = now
            elif since == 0.0 or now - since >= GRACE:
                reason = SOCKET_CLOSED if since == 0.0 else NO_SOCKET
                ended.extend((flow, reason) for flow in self.marker.holders_of(key))
        if len(pending) > len(held):  # keys no longer held
            keep = set(held)
            for key in [k for k in pending if k not in keep]:
                del pending[key]
        return ended

    def idle(self) -> list[tuple[bytes, str]]:
        """Flows that nothing else ends, after idleTimeout seconds without a packet; moves the clock on."""
        self.marker.set_epoch(epoch_now())
        if not self.idle_timeout:
            return []
        tracked = set(self.marker.local_tcp_keys()) if self.mode != "off" else set()
        ended: list[tuple[bytes, str]] = []
        for key in self.marker.idle_keys(self.idle_timeout):
            if key not in tracked:
                ended.extend((flow, IDLE) for flow in self.marker.holders_of(key))
        return ended

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None

    def families(self) -> list[Family]:
        return [Family("flowlabel_socket_tracking", "gauge",
                       "How TCP flows learn that their socket closed (events, polling or off)",
                       [((("mode", self.mode),), 1)])]


async def reap(reaper: Reaper, end: Callable[[list[tuple[bytes, str]]], None]) -> None:
    """Hand ``end`` the flows that end by themselves, until cancelled.

    The kernel's socket events as they come; polls of the socket table and the
    idle clock on their intervals, the first poll at once.
    """
    loop = asyncio.get_running_loop()
    fd = reaper.fd
    if fd is not None:
        loop.add_reader(fd, lambda: end(reaper.sockets_closed()))
    try:
        next_poll = next_tick = time.monotonic()
        while True:
            now = time.monotonic()
            interval = reaper.poll_interval
            if interval is not None and now >= next_poll:
                end(reaper.poll(now))
                next_poll = now + interval
            if now >= next_tick:
                end(reaper.idle())
                next_tick = now + reaper.tick
            wake = min(next_poll, next_tick) if interval is not None else next_tick
            await asyncio.sleep(max(0.0, wake - time.monotonic()))
    finally:
        if fd is not None:
            loop.remove_reader(fd)
