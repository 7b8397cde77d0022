"""The ``prometheus`` backend: a listener of its own that serves only ``/metrics``."""

from __future__ import annotations

from ..httpd import HTTPServer
from ..metrics import Metrics, metrics_route

__all__ = ["PrometheusBackend"]


class PrometheusBackend:
    """Serves :meth:`Metrics.render` at ``/metrics`` on ``address``:``port``."""

    def __init__(self, address: str, port: int, metrics: Metrics) -> None:
        self.server = HTTPServer(address, port, {"/metrics": metrics_route(metrics.render)},
                                 name="prometheus")

    @property
    def url(self) -> str:
        return self.server.url + "/metrics"

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()
