"""Relaying received fireflies, unchanged, to other receivers (``plugins.firefly.fireflyReceivers``).

Every firefly the listener understood is forwarded as the very datagram that
arrived. A datagram forwarded in the last :data:`MEMORY` seconds is not
forwarded again, so relays that point at each other, in a cycle of any length,
pass each firefly on once instead of circling it forever; a receiver that is the
listener itself is refused in the configuration.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Sequence

from .config import ConfigError, FireflyListener
from .metrics import Family
from .udp import Target, UdpSender, resolve

__all__ = ["MEMORY", "FireflyRelay"]

#: Seconds a relayed datagram is remembered, and how many are remembered at most.
MEMORY = 60.0
MEMORY_SIZE = 65536


def _same_socket(target: Target, listening: Target) -> bool:
    (_, (address, port)), (_, (bound, bound_port)) = target, listening
    if port != bound_port:
        return False
    if bound in ("0.0.0.0", "::"):
        return ipaddress.ip_address(address).is_loopback
    return address == bound


class FireflyRelay:
    def __init__(self, config: FireflyListener) -> None:
        self.config = config
        self.targets: list[Target] = []
        self.repeats = 0
        self._sender = UdpSender("relayed firefly")
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def start(self, listening: Target) -> None:
        """Resolve the receivers; ``listening`` is the listener's own address, never a receiver."""
        for i, receiver in enumerate(self.config.firefly_receivers):
            path = f"plugins.firefly.fireflyReceivers[{i}]"
            target = resolve(receiver.address, receiver.port, path)
            if _same_socket(target, listening):
                raise ConfigError(path, "is this listener's own address and port: every firefly would "
                                        "come back to it")
            if target not in self.targets:
                self.targets.append(target)

    def __call__(self, datagrams: Sequence[bytes]) -> None:
        now = time.monotonic()
        seen = self._seen
        while seen and next(iter(seen.values())) < now - MEMORY:
            seen.popitem(last=False)
        for datagram in datagrams:
            digest = hashlib.blake2b(datagram, digest_size=16).digest()
            if digest in seen:
                self.repeats += 1
                continue
            seen[digest] = now
            if len(seen) > MEMORY_SIZE:
                seen.popitem(last=False)
            for target in self.targets:
                self._sender.send(datagram, target, "a received firefly")

    def stop(self) -> None:
        self._sender.close()

    def families(self) -> list[Family]:
        return [
            Family.single("flowlabel_fireflies_relayed_total", "counter",
                          "Received fireflies forwarded (one per receiver)", self._sender.sent),
            Family.single("flowlabel_firefly_relay_errors_total", "counter",
                          "Received fireflies that could not be forwarded", self._sender.errors),
            Family.single("flowlabel_firefly_relay_repeats_total", "counter",
                          "Received fireflies not forwarded again: forwarded in the last minute",
                          self.repeats),
        ]
