"""A small HTTP/1.1 server on asyncio streams, enough for a local JSON API and metrics.

It speaks HTTP/1.0 and 1.1 with keep-alive, request bodies with
``Content-Length`` (chunked request bodies get 411) and nothing fancier:
no TLS, no compression, no pipelining beyond answering requests in order.
It listens on TCP, on a Unix socket, or both.

What a web page in a local browser could send is refused (see
``docs/security.md``): a body that is not ``application/json`` (415; form and
text bodies are what browsers send cross-origin without asking), a ``Host``
that is not the server's own (403; DNS rebinding), and no CORS header is ever
written. With a token, TCP requests need ``Authorization: Bearer TOKEN`` (401);
the Unix socket's file mode guards it instead. Limits keep the daemon alive
when a client misbehaves: request head and body size, idle time, connections
per client (503) and requests per second per client (429). Every refusal is
counted by reason (:meth:`HTTPServer.families`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Union

from .logs import RateLimitedLog

if TYPE_CHECKING:
    from .metrics import Family

__all__ = ["Guard", "HTTPServer", "Request", "Response", "json_response"]

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024
MAX_BODY = 1 << 20
IDLE_TIMEOUT = 30.0

REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
#: The body type the API reads; anything else is refused before a handler runs.
JSON_TYPE = "application/json"
_UNIX_PEER = "unix"


@dataclass
class Guard:
    """Who may talk to a server, and how much."""

    #: Host header names accepted besides the bound address (and "localhost" on loopback).
    allowed_hosts: tuple[str, ...] = ()
    #: Answer any Host (for read-only servers scraped by name, such as a metrics port).
    any_host: bool = False
    #: With a token, TCP requests must carry ``Authorization: Bearer TOKEN``.
    token: str | None = None
    #: Connections open at once from one client address (0: no limit).
    max_connections: int = 32
    #: Connections open at once from all clients together (0: no limit): each holds a file
    #: descriptor, and a daemon out of them can neither accept nor save its state.
    max_total_connections: int = 256
    #: Requests per second from one client address, with as many in a burst (0: no limit).
    max_rate: float = 5000.0
    refused: dict[str, int] = field(default_factory=dict)

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1


def _host_names(address: str, extra: tuple[str, ...]) -> frozenset[str] | None:
    """The Host names a server bound to ``address`` answers to; None: any IP literal."""
    names = {name.lower() for name in extra}
    ip = ipaddress.ip_address(address)
    if ip.is_unspecified:
        return None
    names.add(str(ip))
    if ip.is_loopback:
        names.update(("localhost", "127.0.0.1", "::1"))
    return frozenset(names)


def _host_of(header: str) -> str:
    """The host part of a Host header, without port or brackets, in lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    if header.count(":") == 1:
        return header.partition(":")[0]
    return header


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class _Bucket:
    """A token bucket: ``rate`` requests a second, as many at once."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, rate: float) -> None:
        self.tokens = rate
        self.stamp = time.monotonic()

    def take(self, rate: float) -> bool:
        now = time.monotonic()
        self.tokens = min(rate, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Request(NamedTuple):
    method: str
    path: str
    query: str
    headers: Mapping[str, str]  # names in lower case
    body: bytes
    version: str = "HTTP/1.1"


class Response(NamedTuple):
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, document: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    # Compact, as flowd-go answers: with an indent, json.dumps runs its pure-Python encoder,
    # which took 3.5 times as long for a list of 10,000 flows with their TCP statistics.
    return Response(status, json.dumps(document, separators=(",", ":")).encode() + b"\n", "application/json",
                    headers)


def error_response(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return json_response(status, {"error": message}, headers)


Handler = Callable[[Request], Union[Response, Awaitable[Response]]]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HTTPServer:
    """Serves ``routes`` ({path: {method: handler}}) on ``address``:``port`` (0: a free port) and,
    with ``unix_path``, on a Unix socket made with mode 0660 (owner and the daemon's group).

    ``address`` None serves the Unix socket alone.
    """

    def __init__(self, address: str | None, port: int, routes: Mapping[str, Mapping[str, Handler]],
                 *, name: str = "http", unix_path: str | None = None, guard: Guard | None = None) -> None:
        self.address = address
        self.port = port
        self.name = name
        self.unix_path = unix_path
        self.guard = guard or Guard()
        self._hosts = _host_names(address, self.guard.allowed_hosts) if address else frozenset()
        self._routes = routes
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: set[asyncio.StreamWriter] = set()
        self._per_client: dict[str, int] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._malformed = RateLimitedLog(log, 10, f"malformed requests to the {name} server")

    @property
    def url(self) -> str:
        if self.address is None:
            return f"unix:{self.unix_path}"
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        if self.address is not None:
            family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
            server = await asyncio.start_server(
                self._serve, self.address, self.port, family=family, reuse_address=True, limit=MAX_HEAD
            )
            self._servers.append(server)
            self.port = server.sockets[0].getsockname()[1]
        if self.unix_path is not None:
            try:
                _remove_stale_socket(self.unix_path)
                os.makedirs(os.path.dirname(self.unix_path) or ".", mode=0o755, exist_ok=True)
                server = await asyncio.start_unix_server(self._serve, self.unix_path, limit=MAX_HEAD)
                os.chmod(self.unix_path, 0o660)
            except BaseException:
                await self.stop()
                raise
            self._servers.append(server)

    async def stop(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for writer in list(self._connections):
            writer.close()
        for server in servers:
            await server.wait_closed()
        if servers and self.unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.unix_path)

    def families(self) -> list[Family]:
        from .metrics import Family

        return [Family("flowlabel_http_refused_total", "counter",
                       "HTTP requests and connections refused, by reason",
                       [((("server", self.name), ("reason", reason)), n)
                        for reason, n in sorted(self.guard.refused.items())])]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        client = peername[0] if isinstance(peername, tuple) else _UNIX_PEER
        limit, total = self.guard.max_connections, self.guard.max_total_connections
        over = None
        if total and len(self._connections) >= total:
            over = ("connections_total", f"more than {total} connections open")
        elif limit and client != _UNIX_PEER and self._per_client.get(client, 0) >= limit:
            over = ("connections", f"more than {limit} connections from {client}")
        if over is not None:
            self.guard.refuse(over[0])
            with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
                # Read what was sent first: closing on unread data would reset the connection
                # before the client sees why.
                await asyncio.wait_for(reader.read(MAX_HEAD), 1.0)
                await self._write(writer, error_response(503, over[1]), keep_alive=False)
            writer.close()
            return
        self._per_client[client] = self._per_client.get(client, 0) + 1
        self._connections.add(writer)
        try:
            while True:
                try:
                    request, keep_alive = await self._read_request(reader)
                except _BadRequest as exc:
                    self.guard.refuse("malformed")
                    self._malformed.warning("%s: a malformed request from %s refused (%d): %s", self.name,
                                            client, exc.status, exc)
                    await self._write(writer, error_response(exc.status, str(exc)), keep_alive=False)
                    return
                if request is None:
                    return
                refusal = self._refusal(request, client)
                response = refusal if refusal is not None else await self._dispatch(request)
                await self._write(writer, response, keep_alive, head_only=request.method == "HEAD")
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass  # the client went away, or stopped sending half-way
        finally:
            self._connections.discard(writer)
            left = self._per_client.get(client, 1) - 1
            if left:
                self._per_client[client] = left
            else:
                self._per_client.pop(client, None)
                if len(self._buckets) > 4096:
                    self._buckets.pop(client, None)
            writer.close()

    def _refusal(self, request: Request, client: str) -> Response | None:
        """The answer to a request that may not reach a handler, or None."""
        guard = self.guard
        if client != _UNIX_PEER:
            if guard.max_rate:
                bucket = self._buckets.get(client)
                if bucket is None:
                    bucket = self._buckets[client] = _Bucket(guard.max_rate)
                if not bucket.take(guard.max_rate):
                    guard.refuse("rate")
                    return error_response(429, f"more than {guard.max_rate:g} requests a second from "
                                               f"{client}", (("Retry-After", "1"),))
            host = request.headers.get("host")
            if guard.any_host:
                pass
            elif host is None:
                if request.version != "HTTP/1.0":
                    guard.refuse("host")
                    return error_response(400, "a Host header is required")
            elif not self._host_allowed(_host_of(host)):
                guard.refuse("host")
                return error_response(403, f"Host {host[:80]!r} is not this server's; add it to "
                                           "allowedHosts to use that name")
            if guard.token is not None:
                scheme, _, given = request.headers.get("authorization", "").partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                         guard.token.encode()):
                    guard.refuse("token")
                    return error_response(401, "this API needs Authorization: Bearer TOKEN "
                                               "(the token is in plugins.api.tokenFile)",
                                          (("WWW-Authenticate", 'Bearer realm="flowlabel"'),))
        if request.body:
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != JSON_TYPE:
                guard.refuse("content_type")
                return error_response(415, f"send the body as {JSON_TYPE}, not "
                                           f"{content_type or 'without a Content-Type'}")
        return None

    def _host_allowed(self, host: str) -> bool:
        if self._hosts is None:
            return _is_ip(host) or host in {name.lower() for name in self.guard.allowed_hosts}
        return host in self._hosts

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
            # isdigit() alone lets through digits int() refuses ("\u00b2", which a latin-1 head has).
            if not (length_text.isascii() and length_text.isdigit()):
                raise _BadRequest(400, f"bad Content-Length {length_text[:20]!r}")
            length = int(length_text) if len(length_text) <= 12 else MAX_BODY + 1
            if length > MAX_BODY:
                raise _BadRequest(413, f"request body larger than {MAX_BODY} bytes")
            body = await asyncio.wait_for(reader.readexactly(length), IDLE_TIMEOUT)
        path, _, query = target.partition("?")
        return Request(method.upper(), path, query, headers, body, version), keep_alive

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


def _remove_stale_socket(path: str) -> None:
    """Remove a Unix socket left by a killed daemon; refuse anything else at ``path``, or a live one."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"{path} is served by another process")
