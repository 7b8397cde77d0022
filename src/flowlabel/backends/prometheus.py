"""The ``prometheus`` backend: a listener of its own that serves only ``/metrics``."""

from __future__ import annotations

import ipaddress

from ..httpd import Guard, HTTPServer
from ..metrics import Metrics, metrics_route

__all__ = ["PrometheusBackend"]


class PrometheusBackend:
    """Serves :meth:`Metrics.render` at ``/metrics`` on ``address``:``port``."""

    def __init__(self, address: str, port: int, metrics: Metrics) -> None:
        # Scrapers name the host as they please; on loopback, the Host check keeps web pages
        # (DNS rebinding) from reading the metrics.
        loopback = ipaddress.ip_address(address).is_loopback
        self.server = HTTPServer(address, port, {"/metrics": metrics_route(metrics.render)},
                                 name="prometheus", guard=Guard(any_host=not loopback))

    @property
    def url(self) -> str:
        return self.server.url + "/metrics"

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()
