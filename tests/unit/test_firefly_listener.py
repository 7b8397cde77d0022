"""The firefly listener's guards: sender allow-list, the receive buffer it got, the kernel's drops."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Sequence
from typing import Any

import pytest

from flowlabel import config
from flowlabel.events import FlowEvent, format_firefly
from flowlabel.flowtable import Change
from flowlabel.sources.firefly import FireflySource, allowed_networks, kernel_drops


class Sink:
    def __init__(self) -> None:
        self.events: list[FlowEvent] = []
        self.rejected: list[str] = []

    def submit(self, events: Sequence[FlowEvent], source: str) -> list[Change]:
        self.events.extend(events)
        return []

    def reject(self, source: str, reason: str) -> None:
        self.rejected.append(reason)


def listener(**keys: Any) -> config.FireflyListener:
    cfg = config.parse({"plugins": {"firefly": {"bindPort": 0, **keys}}}).plugins.firefly
    assert cfg is not None
    return cfg


def datagram(sport: int) -> bytes:
    return format_firefly(FlowEvent.of("start", "udp", "2001:db8::1", "2001:db8::2", sport, 5000, 2, 15))


def family(source: FireflySource, name: str) -> float:
    (found,) = [f for f in source.families() if f.name == name]
    return found.samples[0][1]


def run_listener(cfg: config.FireflyListener, send: Any) -> tuple[FireflySource, Sink]:
    sink = Sink()

    async def main() -> FireflySource:
        source = FireflySource(cfg, sink)
        await source.start()
        try:
            await asyncio.get_running_loop().run_in_executor(None, send, source.port)
            await asyncio.sleep(0.2)
            return source
        finally:
            await source.stop()

    return asyncio.run(main()), sink


def test_senders_outside_the_allow_list_are_dropped_and_counted() -> None:
    def send(port: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for sport in range(1, 6):
                s.sendto(datagram(sport), ("127.0.0.1", port))

    source, sink = run_listener(listener(allowedSenders=["192.0.2.0/24"]), send)
    assert sink.events == [] and sink.rejected == []
    assert family(source, "flowlabel_fireflies_refused_senders_total") == 5
    source, sink = run_listener(listener(allowedSenders=["192.0.2.0/24", "127.0.0.0/8"]), send)
    assert [e.sport for e in sink.events] == [1, 2, 3, 4, 5]
    assert family(source, "flowlabel_fireflies_refused_senders_total") == 0


def test_the_default_allow_list_follows_the_bound_address() -> None:
    def networks(**keys: Any) -> list[str] | None:
        found = allowed_networks(listener(**keys))
        return None if found is None else [str(n) for n in found]

    assert networks() == ["127.0.0.0/8", "::1/128"]
    assert networks(bindAddress="0.0.0.0") is None
    assert networks(bindAddress="::", allowedSenders=["2001:db8::/32"]) == ["2001:db8::/32"]
    with pytest.raises(config.ConfigError, match="allowedSenders: \"2001:db8::/300\" is not a network"):
        listener(allowedSenders=["2001:db8::/300"])


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_RCVBUFFORCE past net.core.rmem_max needs CAP_NET_ADMIN")
def test_the_receive_buffer_granted_is_reported_and_kernel_drops_counted() -> None:
    sink = Sink()

    async def main() -> tuple[int, int, float, float]:
        big = FireflySource(listener(receiveBuffer=64 << 20), sink)
        await big.start()
        granted = big.receive_buffer
        await big.stop()
        small = FireflySource(listener(receiveBuffer=1 << 16), sink)
        await small.start()
        try:
            # The loop is not running the listener while this sends: the small buffer overflows.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for sport in range(1, 3001):
                    s.sendto(datagram(sport), ("127.0.0.1", small.port))
            inode = os.fstat(small._sock.fileno()).st_ino  # type: ignore[union-attr]
            return (granted, kernel_drops(inode),
                    family(small, "flowlabel_firefly_kernel_drops_total"),
                    family(small, "flowlabel_firefly_receive_buffer_bytes"))
        finally:
            await small.stop()

    granted, drops, exported, small_buffer = asyncio.run(main())
    assert granted == 64 << 20  # beyond rmem_max: SO_RCVBUFFORCE, as root or with CAP_NET_ADMIN
    assert drops > 0 and exported == drops
    assert small_buffer == 1 << 16
