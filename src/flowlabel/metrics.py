"""The daemon's metrics, in the Prometheus text format.

The daemon's parts describe what they count as :class:`Family` objects;
:class:`Metrics` holds the event counters, asks the parts for the rest and
renders everything. The API serves the result at ``/metrics`` (:func:`metrics_route`),
and so does the ``prometheus`` backend's own listener.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Callable, NamedTuple

from . import __version__
from .httpd import Handler, Request, Response

__all__ = ["Family", "Metrics", "metrics_route"]

Sample = tuple[tuple[tuple[str, str], ...], float]


class Family(NamedTuple):
    """One metric: its name, type (``counter`` or ``gauge``), help text and samples."""

    name: str
    kind: str
    help: str
    samples: list[Sample]

    @classmethod
    def single(cls, name: str, kind: str, help: str, value: float) -> Family:
        return cls(name, kind, help, [((), value)])


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return repr(value)


class Metrics:
    """Event counters by source and outcome, plus whatever the collectors report."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, str], int] = {}
        self._collectors: list[Callable[[], Iterable[Family]]] = []
        self._started = time.time()

    def count(self, source: str, outcome: str, n: int = 1) -> None:
        key = (source, outcome)
        self.events[key] = self.events.get(key, 0) + n

    def total(self, outcome: str | None = None, source: str | None = None) -> int:
        return sum(
            n
            for (src, out), n in self.events.items()
            if (outcome is None or out == outcome) and (source is None or src == source)
        )

    def add_collector(self, collector: Callable[[], Iterable[Family]]) -> None:
        self._collectors.append(collector)

    def families(self) -> list[Family]:
        families = [
            Family("flowlabel_info", "gauge", "flowlabel's version, as a label",
                   [((("version", __version__),), 1)]),
            Family.single("flowlabel_start_time_seconds", "gauge",
                          "When the daemon started, in seconds since the epoch", self._started),
            Family(
                "flowlabel_events_total",
                "counter",
                "Flow events by source (pipe, firefly, api) and outcome "
                "(started, refreshed, ended, unknown_end, ipv4_ignored, failed, rejected)",
                [((("source", src), ("outcome", out)), n) for (src, out), n in sorted(self.events.items())],
            ),
        ]
        for collector in self._collectors:
            families.extend(collector())
        return families

    def render(self) -> str:
        out: list[str] = []
        for family in self.families():
            out.append(f"# HELP {family.name} {family.help}")
            out.append(f"# TYPE {family.name} {family.kind}")
            for labels, value in family.samples:
                if labels:
                    text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                    out.append(f"{family.name}{{{text}}} {_number(value)}")
                else:
                    out.append(f"{family.name} {_number(value)}")
        return "\n".join(out) + "\n"


#: The media type of the text exposition format.
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def metrics_route(render: Callable[[], str]) -> dict[str, Handler]:
    """The ``/metrics`` route of an HTTP server: GET answers with ``render()``."""

    def metrics(request: Request) -> Response:
        return Response(200, render().encode(), PROMETHEUS_TEXT)

    return {"GET": metrics}
