"""What a web page, a local user or a flood could do to the API: refused, counted, and the daemon lives.

The threat model is in docs/security.md.
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_api import EVENT, free_port, raw, with_daemon

from flowlabel import config
from flowlabel.api_client import ApiClient, ApiError
from flowlabel.daemon import Daemon
from flowlabel.httpd import Guard, HTTPServer, json_response
from support.tools import program


def api_config(tmp_path: Path, **api: Any) -> config.Config:
    return config.parse({"pidPath": str(tmp_path / "pid"), "workDir": str(tmp_path / "work"),
                         "summaryInterval": 0, "plugins": {"api": {"bindPort": free_port(), **api}}})


def post(port: int, content_type: str, host: str = "127.0.0.1", extra: str = "") -> bytes:
    body = json.dumps(EVENT).encode()
    return raw(port, (f"POST /flows HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n{extra}"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)


def held_connections(port: int, count: int) -> list[socket.socket]:
    """``count`` keep-alive connections, each answered once: the server holds them all now."""
    held = []
    for _ in range(count):
        conn = socket.create_connection(("127.0.0.1", port), timeout=5)
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += conn.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:80]
        held.append(conn)
    return held


def refused(daemon: Daemon) -> dict[str, float]:
    text = daemon.metrics_text()
    found = {}
    for line in text.splitlines():
        if line.startswith('flowlabel_http_refused_total{server="api"'):
            name, _, value = line.rpartition(" ")
            found[name.split('reason="')[1].rstrip('"}')] = float(value)
    return found


def test_what_a_browser_may_send_cross_origin_is_refused(tmp_path: Path) -> None:
    cfg = api_config(tmp_path)
    port = cfg.plugins.api.bind_port  # type: ignore[union-attr]

    def body(daemon: Daemon, client: ApiClient) -> dict[str, bytes]:
        answers = {
            "form": post(port, "application/x-www-form-urlencoded"),
            "text": post(port, "text/plain"),
            "multipart": post(port, "multipart/form-data; boundary=x"),
            "preflight": raw(port, b"OPTIONS /flows HTTP/1.1\r\nOrigin: http://evil.example\r\n"
                                   b"Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"),
            "origin": raw(port, b"GET /flows HTTP/1.1\r\nOrigin: http://evil.example\r\n"
                                b"Connection: close\r\n\r\n"),
        }
        assert client.flows() == []  # nothing above started a flow
        answers["json"] = post(port, "application/json; charset=utf-8")
        answers["refused"] = json.dumps(refused(daemon)).encode()
        return answers

    answers = with_daemon(cfg, body)
    for kind in ("form", "text", "multipart"):
        assert answers[kind].startswith(b"HTTP/1.1 415 "), answers[kind][:60]
    assert answers["preflight"].startswith(b"HTTP/1.1 405 ")
    assert answers["origin"].startswith(b"HTTP/1.1 200 ")
    for answer in answers.values():
        assert b"access-control" not in answer.lower()  # no CORS, ever
    assert answers["json"].startswith(b"HTTP/1.1 201 ")
    assert json.loads(answers["refused"]) == {"content_type": 3}


@pytest.mark.parametrize(
    ("host", "status"),
    [("evil.example", 403), ("evil.example:7777", 403), ("10.0.0.1", 403), ("localhost:7777", 201),
     ("127.0.0.1", 201), ("[::1]:7777", 201), ("flowlabel.example", 201)],
)
def test_only_the_servers_own_host_names_are_answered(tmp_path: Path, host: str, status: int) -> None:
    cfg = api_config(tmp_path, allowedHosts=["flowlabel.example"])
    port = cfg.plugins.api.bind_port  # type: ignore[union-attr]
    answer = with_daemon(cfg, lambda daemon, client: post(port, "application/json", host=host))
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:80]


def test_a_missing_host_is_refused_on_http_1_1(tmp_path: Path) -> None:
    cfg = api_config(tmp_path)
    port = cfg.plugins.api.bind_port  # type: ignore[union-attr]
    answers = with_daemon(cfg, lambda daemon, client: [
        raw(port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
        raw(port, b"GET /health HTTP/1.0\r\n\r\n"),
    ])
    assert answers[0].startswith(b"HTTP/1.1 200 ") and answers[1].startswith(b"HTTP/1.1 200 ")
    bare = with_daemon(cfg, lambda daemon, client: _without_host(port))
    assert bare.startswith(b"HTTP/1.1 400 ") and b"Host header is required" in bare


def _without_host(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_a_token_is_required_over_tcp_when_set(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    token_file.chmod(0o600)
    cfg = api_config(tmp_path, tokenFile=str(token_file), unixSocket=str(tmp_path / "api.sock"))
    port = cfg.plugins.api.bind_port  # type: ignore[union-attr]

    def body(daemon: Daemon, client: ApiClient) -> None:
        with pytest.raises(ApiError) as info:
            client.flows()
        assert info.value.status == 401 and "Bearer" in str(info.value)
        with pytest.raises(ApiError):
            ApiClient(client.url, token="wrong").flows()
        assert ApiClient(client.url, token="s3cret-token").start(EVENT)["outcome"] == "started"
        # The Unix socket is guarded by its mode, not the token.
        assert len(ApiClient(f"unix:{tmp_path / 'api.sock'}").flows()) == 1
        assert refused(daemon) == {"token": 2}

    with_daemon(cfg, body)
    assert port


def test_a_token_file_every_user_may_read_stops_the_start(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    token_file.chmod(0o644)
    cfg = api_config(tmp_path, tokenFile=str(token_file))
    with pytest.raises(Exception, match="readable by every user"):
        with_daemon(cfg, lambda daemon, client: None)


def test_limits_per_client_answer_and_count(tmp_path: Path) -> None:
    cfg = api_config(tmp_path, maxConnectionsPerClient=4, maxRequestsPerSecond=10)
    port = cfg.plugins.api.bind_port  # type: ignore[union-attr]

    def body(daemon: Daemon, client: ApiClient) -> tuple[list[bytes], list[int], float, dict[str, float]]:
        held = held_connections(port, 4)
        fifth = raw(port, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        for conn in held:
            conn.close()
        time.sleep(0.2)  # the rate's bucket full again
        statuses = []
        began = time.monotonic()
        for _ in range(40):
            try:
                client.health()
                statuses.append(200)
            except ApiError as exc:
                statuses.append(exc.status or 0)
        return [fifth], statuses, time.monotonic() - began, refused(daemon)

    (fifth,), statuses, seconds, counts = with_daemon(cfg, body)
    assert fifth.startswith(b"HTTP/1.1 503 ") and b"more than 4 connections" in fifth
    # 10 at once, then 10 a second: however long the 40 took, no more were answered.
    assert statuses[0] == 200 and set(statuses) <= {200, 429}
    assert statuses.count(200) <= 10 + 10 * seconds + 1, (statuses.count(200), seconds)
    assert counts["connections"] == 1 and counts.get("rate", 0) == statuses.count(429)


def test_the_unix_socket_has_the_daemons_group_and_the_cli_uses_it(tmp_path: Path) -> None:
    setpriv = program("setpriv", "util-linux: to run the daemon with another group")
    group = grp.getgrnam("nogroup").gr_gid if "nogroup" in {g.gr_name for g in grp.getgrall()} else 65534
    sock = tmp_path / "run" / "api.sock"
    conf = tmp_path / "flowlabel.json"
    conf.write_text(json.dumps({"pidPath": str(tmp_path / "pid"), "workDir": str(tmp_path / "work"),
                                "plugins": {"api": {"bindAddress": None, "unixSocket": str(sock)}}}))
    conf.chmod(0o644)
    daemon = subprocess.Popen([setpriv, f"--regid={group}", "--clear-groups", sys.executable, "-m",
                               "flowlabel", "--config", str(conf), "run"], stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(500):
            if sock.exists():
                break
            time.sleep(0.01)
        info = os.stat(sock)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == group
        cli = [sys.executable, "-m", "flowlabel", "--config", str(conf)]
        flow = ["tcp", "2001:db8::1", "2345", "2001:db8::2", "5777", "2", "15"]
        started = subprocess.run([*cli, "start", *flow], capture_output=True, text=True, timeout=30)
        assert started.returncode == 0, started.stderr
        listed = subprocess.run([*cli, "flows"], capture_output=True, text=True, timeout=30)
        assert "[2001:db8::1]:2345" in listed.stdout
    finally:
        daemon.terminate()
        assert daemon.wait(10) == 0, daemon.stderr.read() if daemon.stderr else ""
    assert not sock.exists()  # removed at exit


def serve(guard: Guard, clients: Callable[[int], Any]) -> tuple[Any, dict[str, int]]:
    """An HTTP server with ``guard`` and one route, while ``clients(port)`` runs in a thread."""
    port = free_port()
    routes = {"/health": {"GET": lambda request: json_response(200, {"status": "ok"})}}

    async def main() -> Any:
        server = HTTPServer("127.0.0.1", port, routes, guard=guard)
        await server.start()
        try:
            return await asyncio.get_running_loop().run_in_executor(None, clients, port)
        finally:
            await server.stop()

    return asyncio.run(main()), guard.refused


def test_connections_from_all_clients_together_are_capped() -> None:
    def clients(port: int) -> bytes:
        held = held_connections(port, 3)
        try:
            return raw(port, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        finally:
            for conn in held:
                conn.close()

    answer, counts = serve(Guard(max_connections=0, max_total_connections=3), clients)
    assert answer.startswith(b"HTTP/1.1 503 ") and b"more than 3 connections open" in answer
    assert counts == {"connections_total": 1}


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"POST /health HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n",  # a digit int() refuses
    b"POST /health HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
])
def test_malformed_requests_are_answered_counted_and_logged(request_bytes: bytes,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    answer, counts = serve(Guard(), lambda port: raw(port, request_bytes))
    assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 413 ", b"HTTP/1.1 431 ")), answer[:80]
    assert counts == {"malformed": 1}
    assert any("a malformed request from 127.0.0.1 refused" in r.getMessage() for r in caplog.records)
