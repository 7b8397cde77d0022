"""The HTTP API: flow events in, active flows, health and metrics out.

=========================== ==================================================================
``GET /``                   the endpoints
``GET /health``             ``{"status": "ok", ...}``: version, uptime, active flows, interfaces
``GET /metrics``            Prometheus text format
``GET /openapi.json``       this API in OpenAPI 3.1
``GET /flows``              ``{"flows": [...], "rules": [...]}``: the active flows with their labels
``POST /flows``             a flow event (``state`` defaults to ``"start"``), or an array of them
``POST /flows/end``         end a flow (``state`` defaults to, and must be, ``"end"``)
``DELETE /flows``           the same as ``POST /flows/end``
``POST /flow``              flowd-go's route: its flow object (:mod:`flowlabel.events.flowdgo`)
``GET /dummy/start``        flowd-go's route: start its test flow ([::1]:2345 to [::1]:5777)
``GET /dummy/end``          flowd-go's route: end that flow
=========================== ==================================================================

``GET /`` lists the routes as ``endpoints`` and, for flowd-go's clients, as
``ApiRoutes``. flowd-go's routes answer as flowd-go does: 200 with the flow
echoed in flowd-go's shape, or 400 with ``{"message": ...}``.

Event bodies are the JSON objects of :func:`flowlabel.events.parse_api`. The
answer to one event is ``{"outcome": ..., "flow": {...}}`` (201 when a flow
started, 200 otherwise); to an array, ``{"results": [...]}`` with one such
object, or ``{"error": ...}``, per element. A bad event is answered with 400
and ``{"error": "field 'src_ip': ..."}`` and counted like any rejected input.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from .. import __version__, tcpinfo
from ..config import Api
from ..events import EventError, FlowEvent, format_api, parse_api
from ..events.flowdgo import DUMMY, format_flowd_go, parse_flowd_go
from ..flowtable import STARTED, Change, Plain
from ..httpd import Guard, Handler, HTTPServer, Request, Response, error_response, json_response
from ..metrics import metrics_route
from ..registry import Registry
from . import EventSink

log = logging.getLogger(__name__)

__all__ = ["OPENAPI", "ApiSource", "DaemonView", "read_token"]

#: The API described in OpenAPI 3.1, served at /openapi.json.
OPENAPI = Path(__file__).resolve().parent.parent / "data" / "openapi.json"

SOURCE = "api"


class DaemonView(EventSink, Protocol):
    """What the API needs from the daemon besides taking events."""

    def flow_rows(self) -> list[Plain]: ...

    def rule_list(self) -> list[dict[str, Any]]: ...

    def health(self) -> dict[str, Any]: ...

    def metrics_text(self) -> str: ...


def read_token(path: str) -> str:
    """The bearer token in the file ``path``; a file every user may read is refused (OSError)."""
    with open(path, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        token = f.read().decode("utf-8", "replace").strip()
    if mode & stat.S_IROTH:
        raise OSError(f"the token file {path} is readable by every user (mode {stat.S_IMODE(mode):04o}); "
                      f"fix: chmod o-r {path}")
    if not token or any(c.isspace() for c in token):
        raise OSError(f"the token file {path} must hold one token without spaces")
    return token


def _result(change: Change) -> dict[str, Any]:
    flow = change.record.as_api() if change.record is not None else format_api(change.event)
    return {"outcome": change.outcome, "flow": flow}


class ApiSource:
    """The HTTP API on ``address``:``port`` (``port`` 0 picks a free one)."""

    def __init__(self, config: Api, daemon: DaemonView, *, registry: Registry | None = None) -> None:
        self._daemon = daemon
        self._registry = registry
        self._started = time.monotonic()
        routes: dict[str, dict[str, Handler]] = {
            "/": {"GET": self._root},
            "/health": {"GET": self._health},
            "/metrics": metrics_route(daemon.metrics_text),
            "/openapi.json": {"GET": self._openapi},
            "/flows": {"GET": self._list, "POST": self._post, "DELETE": self._end},
            "/flows/end": {"POST": self._end},
            "/flow": {"POST": self._flowd_go_flow},
            "/dummy/start": {"GET": lambda request: self._flowd_go_dummy("start")},
            "/dummy/end": {"GET": lambda request: self._flowd_go_dummy("end")},
        }
        self._routes = routes
        self.config = config
        self.guard = Guard(allowed_hosts=tuple(config.allowed_hosts),
                           max_connections=config.max_connections_per_client,
                           max_rate=config.max_requests_per_second)
        self.server = HTTPServer(config.bind_address, config.bind_port, routes, name="api",
                                 unix_path=config.unix_socket, guard=self.guard)

    @property
    def url(self) -> str:
        return self.server.url

    async def start(self) -> None:
        if self.config.token_file is not None:
            self.guard.token = read_token(self.config.token_file)
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    # -- endpoints ----------------------------------------------------------------------------

    def _root(self, request: Request) -> Response:
        endpoints = [
            {"method": method, "path": path}
            for path, methods in self._routes.items()
            for method in methods
        ]
        flowd_go = [{**endpoint, "name": f"{endpoint['method']} {endpoint['path']}"}
                    for endpoint in endpoints]
        return json_response(200, {"service": "flowlabel", "version": __version__, "endpoints": endpoints,
                                   "ApiRoutes": flowd_go})

    def _openapi(self, request: Request) -> Response:
        return Response(200, OPENAPI.read_bytes(), "application/json")

    def _health(self, request: Request) -> Response:
        return json_response(200, {"status": "ok", "version": __version__, **self._daemon.health()})

    def _list(self, request: Request) -> Response:
        rows = self._daemon.flow_rows()
        listed = [row.as_api() for row in rows]
        if any(row.protocol == "tcp" for row in rows):
            # The kernel's TCP statistics of each TCP flow with a socket here, read in one dump.
            try:
                sockets = tcpinfo.sweep()
            except OSError as exc:
                log.debug("no TCP statistics for the flow list: %s", exc)
                sockets = {}
            of_ends = tcpinfo.of_ends
            for row, item in zip(rows, listed):
                if row.protocol != "tcp":
                    continue
                stats = of_ends(sockets, row.src, row.dst, row.sport, row.dport)
                if stats is not None:
                    item["tcp"] = stats.as_json()
        return json_response(200, {"flows": listed, "rules": self._daemon.rule_list()})

    def _post(self, request: Request) -> Response:
        return self._events(request, "start", forced=False)

    def _end(self, request: Request) -> Response:
        return self._events(request, "end", forced=True)

    # -- flowd-go's routes ------------------------------------------------------------------------

    def _flowd_go_flow(self, request: Request) -> Response:
        try:
            event = parse_flowd_go(json.loads(request.body))
        except (ValueError, RecursionError) as exc:
            message = str(exc) if isinstance(exc, EventError) else f"the body is not valid JSON: {exc}"
            self._daemon.reject(SOURCE, f"POST /flow: {message}")
            return json_response(400, {"message": message})
        return self._flowd_go_submit(event)

    def _flowd_go_dummy(self, state: str) -> Response:
        return self._flowd_go_submit(parse_flowd_go({**DUMMY, "State": state}))

    def _flowd_go_submit(self, event: FlowEvent) -> Response:
        (change,) = self._daemon.submit([event], SOURCE)
        if change.record is not None and change.outcome == STARTED:
            event = event._replace(start_time=change.record.start_time)
        return json_response(200, format_flowd_go(event))

    # -- event bodies ---------------------------------------------------------------------------

    def _events(self, request: Request, state: str, *, forced: bool) -> Response:
        try:
            document = json.loads(request.body)
        except (ValueError, RecursionError) as exc:
            self._daemon.reject(SOURCE, f"request body is not JSON: {exc}")
            return error_response(400, f"the body is not valid JSON: {exc}")
        if isinstance(document, list):
            return self._batch(document, state, forced)
        try:
            event = self._parse(document, state, forced)
        except EventError as exc:
            self._daemon.reject(SOURCE, str(exc))
            return error_response(400, str(exc))
        (change,) = self._daemon.submit([event], SOURCE)
        return json_response(201 if change.outcome == STARTED else 200, _result(change))

    def _batch(self, documents: Sequence[object], state: str, forced: bool) -> Response:
        results: list[dict[str, Any] | None] = []
        events: list[FlowEvent] = []
        for i, document in enumerate(documents):
            try:
                events.append(self._parse(document, state, forced))
                results.append(None)
            except EventError as exc:
                self._daemon.reject(SOURCE, f"[{i}]: {exc}")
                results.append({"error": str(exc)})
        changes = iter(self._daemon.submit(events, SOURCE))
        filled = [result if result is not None else _result(next(changes)) for result in results]
        return json_response(200, {"results": filled})

    def _parse(self, document: object, state: str, forced: bool) -> FlowEvent:
        if isinstance(document, dict):
            given = document.get("state", state)
            # The parsers take the state in any case; so do the endpoints that fix it.
            if forced and not (isinstance(given, str) and given.lower() == state):
                raise EventError("state", f"must be {state!r} at this endpoint, got {given!r}")
            if "state" not in document:
                document = {**document, "state": state}
        return parse_api(document, self._registry)  # type: ignore[arg-type]
