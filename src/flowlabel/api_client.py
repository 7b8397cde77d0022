"""A client for a running daemon's HTTP API (used by ``flowlabel flows``, ``start`` and ``end``)."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import urlsplit

from .defaults import API_URL

__all__ = ["DEFAULT_URL", "ApiClient", "ApiError"]

DEFAULT_URL = API_URL


class ApiError(Exception):
    """The daemon could not be reached, or it refused the request (``status`` is then set)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket; the Host header says ``localhost``."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ApiClient:
    """Talks to the API at ``url``: ``http://host:port``, or ``unix:/path`` for its Unix socket.

    ``token`` is sent as ``Authorization: Bearer TOKEN``.
    """

    def __init__(self, url: str = DEFAULT_URL, *, timeout: float = 5.0, token: str | None = None) -> None:
        self._timeout = timeout
        self._token = token
        self._unix: str | None = None
        if url.startswith("unix:"):
            self._unix = url[len("unix:"):]
            if not self._unix:
                raise ApiError(f"not a Unix socket path: {url!r}")
            self.url = url
            self._host, self._port = "localhost", 0
            return
        try:
            parts = urlsplit(url if "//" in url else f"http://{url}")
            port = parts.port  # raises for a port that is not a number 0-65535
        except ValueError as exc:
            raise ApiError(f"not an http:// URL or unix:PATH: {url!r} ({exc})") from None
        if parts.scheme != "http" or not parts.hostname:
            raise ApiError(f"not an http:// URL or unix:PATH: {url!r}")
        self.url = f"http://{parts.netloc}"
        self._host = parts.hostname
        self._port = port or 80

    def _connection(self) -> http.client.HTTPConnection:
        if self._unix is not None:
            return _UnixConnection(self._unix, self._timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def request(self, method: str, path: str, document: Any = None) -> Any:
        """Send one request; return the decoded JSON answer or raise :class:`ApiError`."""
        body = None if document is None else json.dumps(document).encode()
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        connection = self._connection()
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if isinstance(exc, socket.timeout):
                reason = "timed out"
            raise ApiError(
                f"cannot reach the flowlabel daemon at {self.url}: {reason} "
                "(is `flowlabel run` running, with plugins.api enabled?)"
            ) from None
        finally:
            connection.close()
        try:
            answer = json.loads(data) if data else None
        except ValueError:
            raise ApiError(f"{self.url}{path} answered {response.status} with something other than JSON",
                           response.status) from None
        if response.status >= 400:
            # flowlabel's routes answer {"error": ...}, flowd-go's {"message": ...}.
            message = (answer.get("error") or answer.get("message")) if isinstance(answer, dict) else None
            raise ApiError(message or f"{method} {path}: HTTP {response.status}", response.status)
        return answer

    def health(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("GET", "/health")
        return answer

    def flows(self) -> list[dict[str, Any]]:
        flows: list[dict[str, Any]] = self.listing()["flows"]
        return flows

    def listing(self) -> dict[str, Any]:
        """``GET /flows``: the active flows and the site rules (with the packets each decided)."""
        answer: dict[str, Any] = self.request("GET", "/flows")
        return answer

    def start(self, event: dict[str, Any]) -> dict[str, Any]:
        """Start (or refresh) a flow; ``event`` is an API event object (``state`` may be left out)."""
        answer: dict[str, Any] = self.request("POST", "/flows", event)
        return answer

    def end(self, event: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("POST", "/flows/end", event)
        return answer
