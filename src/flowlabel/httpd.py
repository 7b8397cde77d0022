"""A small HTTP/1.1 server on asyncio streams, enough for a local JSON API and metrics.

It speaks HTTP/1.0 and 1.1 with keep-alive, request bodies with
``Content-Length`` (chunked request bodies get 411) and nothing fancier:
no TLS, no compression, no pipelining beyond answering requests in order.
Limits protect the daemon from clients that misbehave: request head size,
body size and idle time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Mapping
from typing import Any, Callable, NamedTuple, Union

__all__ = ["HTTPServer", "Request", "Response", "json_response"]

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024
MAX_BODY = 1 << 20
IDLE_TIMEOUT = 30.0

REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    505: "HTTP Version Not Supported",
}


class Request(NamedTuple):
    method: str
    path: str
    query: str
    headers: Mapping[str, str]  # names in lower case
    body: bytes


class Response(NamedTuple):
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, document: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, json.dumps(document, indent=1).encode() + b"\n", "application/json", headers)


def error_response(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return json_response(status, {"error": message}, headers)


Handler = Callable[[Request], Union[Response, Awaitable[Response]]]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HTTPServer:
    """Serves ``routes`` ({path: {method: handler}}) on ``address``:``port`` (0: a free port)."""

    def __init__(self, address: str, port: int, routes: Mapping[str, Mapping[str, Handler]],
                 *, name: str = "http") -> None:
        self.address = address
        self.port = port
        self.name = name
        self._routes = routes
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        self._server = await asyncio.start_server(
            self._serve, self.address, self.port, family=family, reuse_address=True, limit=MAX_HEAD
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._connections):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                try:
                    request, keep_alive = await self._read_request(reader)
                except _BadRequest as exc:
                    await self._write(writer, error_response(exc.status, str(exc)), keep_alive=False)
                    return
                if request is None:
                    return
                response = await self._dispatch(request)
                await self._write(writer, response, keep_alive, head_only=request.method == "HEAD")
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass  # the client went away, or stopped sending half-way
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[Request | None, bool]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
        except asyncio.TimeoutError:
            return None, False
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise _BadRequest(400, "incomplete request head") from None
            return None, False
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, f"request head larger than {MAX_HEAD} bytes") from None
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
            raise _BadRequest(400, "undecodable request head") from None
        request_line, *header_lines = text[:-4].split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise _BadRequest(400, f"malformed request line {request_line[:80]!r}")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _BadRequest(505, f"{version} is not supported; use HTTP/1.1")
        headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(400, f"malformed header line {line[:80]!r}")
            headers[name.lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        if "transfer-encoding" in headers:
            raise _BadRequest(411, "chunked request bodies are not supported; send Content-Length")
        body = b""
        length_text = headers.get("content-length")
        if length_text is not None:
            if not length_text.isdigit():
                raise _BadRequest(400, f"bad Content-Length {length_text[:20]!r}")
            length = int(length_text)
            if length > MAX_BODY:
                raise _BadRequest(413, f"request body larger than {MAX_BODY} bytes")
            body = await asyncio.wait_for(reader.readexactly(length), IDLE_TIMEOUT)
        path, _, query = target.partition("?")
        return Request(method.upper(), path, query, headers, body), keep_alive

    async def _dispatch(self, request: Request) -> Response:
        methods = self._routes.get(request.path.rstrip("/") or "/")
        if methods is None:
            return error_response(404, f"no such endpoint: {request.path}")
        method = "GET" if request.method == "HEAD" else request.method
        handler = methods.get(method)
        if handler is None:
            allowed = ", ".join(sorted(methods))
            return error_response(405, f"{request.method} is not allowed on {request.path}; use {allowed}",
                                  (("Allow", allowed),))
        try:
            result = handler(request)
            return await result if not isinstance(result, Response) else result
        except Exception:
            log.exception("%s: %s %s failed", self.name, request.method, request.path)
            return error_response(500, "internal error; see the daemon's log")

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, response: Response, keep_alive: bool,
                     *, head_only: bool = False) -> None:
        reason = REASONS.get(response.status, "")
        lines = [
            f"HTTP/1.1 {response.status} {reason}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
            "Server: flowlabel",
        ]
        lines.extend(f"{name}: {value}" for name, value in response.headers)
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(response.body)
        await writer.drain()
