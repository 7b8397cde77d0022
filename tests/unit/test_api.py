"""The HTTP API and its client, against a daemon without the eBPF backend (no privileges needed)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest

from flowlabel import config
from flowlabel.api_client import ApiClient, ApiError
from flowlabel.daemon import Daemon
from flowlabel.label import decode

T = TypeVar("T")

EVENT = {
    "protocol": "tcp",
    "src_ip": "2001:db8::1",
    "src_port": 2345,
    "dst_ip": "2001:db8::2",
    "dst_port": 5777,
    "experiment": 2,
    "activity": 15,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def cfg(tmp_path: Path) -> config.Config:
    return config.parse({
        "pidPath": str(tmp_path / "flowlabel.pid"),
        "workDir": str(tmp_path / "work"),
        "summaryInterval": 0,
        "plugins": {"api": {"bindPort": free_port()}},
        "backends": {"prometheus": {"bindPort": free_port()}},
    })


def with_daemon(cfg: config.Config, body: Callable[[Daemon, ApiClient], T]) -> T:
    """Run the daemon, call ``body`` (blocking, in a worker thread) and stop the daemon."""
    assert cfg.plugins.api is not None
    client = ApiClient(f"http://127.0.0.1:{cfg.plugins.api.bind_port}")

    async def main() -> T:
        daemon = Daemon(cfg)
        task = asyncio.create_task(daemon.run())
        for _ in range(500):
            if daemon.ready is not None and daemon.ready.is_set():
                break
            if task.done():
                await task
            await asyncio.sleep(0.01)
        try:
            return await asyncio.get_running_loop().run_in_executor(None, body, daemon, client)
        finally:
            daemon.stop()
            await task

    return asyncio.run(main())


def raw(port: int, request: bytes) -> bytes:
    """Send ``request`` as it is; HTTP/1.1 requests without a Host header get this server's."""
    if b"\r\nHost:" not in request:
        request = request.replace(b" HTTP/1.1\r\n", b" HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_start_list_end(cfg: config.Config) -> None:
    def body(daemon: Daemon, client: ApiClient) -> None:
        started = client.start(EVENT)
        assert started["outcome"] == "started"
        label = started["flow"]["label"]
        assert decode(label)[:2] == (2, 15)
        # A second start refreshes and keeps the label.
        assert client.start(EVENT) == {**started, "outcome": "refreshed"}
        (listed,) = client.flows()
        assert listed["label"] == label and listed["src_ip"] == "2001:db8::1" and listed["source"] == "api"
        assert client.end(EVENT)["outcome"] == "ended"
        assert client.flows() == []
        assert client.end(EVENT)["outcome"] == "unknown_end"
        # The state in any case, as POST /flows takes it.
        client.start({**EVENT, "state": "START"})
        assert client.end({**EVENT, "state": "End"})["outcome"] == "ended"

    with_daemon(cfg, body)


def test_a_new_activity_keeps_the_entropy(cfg: config.Config) -> None:
    def body(daemon: Daemon, client: ApiClient) -> None:
        first = client.start(EVENT)["flow"]["label"]
        second = client.start({**EVENT, "activity": 3})["flow"]["label"]
        assert decode(second) == (2, 3, decode(first).entropy)

    with_daemon(cfg, body)


def test_entropy_varies_across_flows(cfg: config.Config) -> None:
    def body(daemon: Daemon, client: ApiClient) -> set[int]:
        return {decode(client.start({**EVENT, "src_port": port})["flow"]["label"]).entropy
                for port in range(1000, 1040)}

    assert len(with_daemon(cfg, body)) > 1


def test_bad_events_are_400_and_counted(cfg: config.Config) -> None:
    def body(daemon: Daemon, client: ApiClient) -> str:
        with pytest.raises(ApiError, match="src_ip") as info:
            client.start({**EVENT, "src_ip": "not-an-address"})
        assert info.value.status == 400
        with pytest.raises(ApiError, match="unknown key"):
            client.start({**EVENT, "colour": "blue"})
        with pytest.raises(ApiError, match="must be 'end'"):
            client.end({**EVENT, "state": "start"})
        client.start(EVENT)
        return client.request("GET", "/health")["rejected"], daemon.metrics_text()

    rejected, metrics = with_daemon(cfg, body)
    assert rejected == 3
    assert 'flowlabel_events_total{source="api",outcome="rejected"} 3' in metrics
    assert 'flowlabel_events_total{source="api",outcome="started"} 1' in metrics


def test_batches_answer_per_element(cfg: config.Config) -> None:
    def body(daemon: Daemon, client: ApiClient) -> Any:
        return client.request("POST", "/flows", [EVENT, {"protocol": "tcp"}, {**EVENT, "src_port": 1}])

    results = with_daemon(cfg, body)["results"]
    assert [r.get("outcome") for r in results] == ["started", None, "started"]
    assert "required key missing" in results[1]["error"]


def test_ipv4_is_accepted_but_not_marked(cfg: config.Config) -> None:
    def body(daemon: Daemon, client: ApiClient) -> Any:
        answer = client.start({**EVENT, "src_ip": "192.0.2.1", "dst_ip": "192.0.2.2"})
        return answer, client.flows()

    answer, flows = with_daemon(cfg, body)
    assert answer["outcome"] == "ipv4_ignored" and flows == []


def test_health_metrics_and_the_prometheus_port(cfg: config.Config) -> None:
    assert cfg.backends.prometheus is not None
    prom_port = cfg.backends.prometheus.bind_port

    def body(daemon: Daemon, client: ApiClient) -> tuple[Any, bytes, bytes]:
        client.start(EVENT)
        health = client.health()
        api_port = cfg.plugins.api.bind_port  # type: ignore[union-attr]
        api_metrics = raw(api_port, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        prom = raw(prom_port, b"GET /metrics HTTP/1.0\r\n\r\n")
        return health, api_metrics, prom

    health, api_metrics, prom = with_daemon(cfg, body)
    assert health["status"] == "ok" and health["active_flows"] == 1
    for answer in (api_metrics, prom):
        head, _, text = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"Content-Type: text/plain; version=0.0.4" in head
        assert b"flowlabel_active_flows 1\n" in text
        assert b"# TYPE flowlabel_events_total counter" in text


def test_http_errors(cfg: config.Config) -> None:
    assert cfg.plugins.api is not None
    port = cfg.plugins.api.bind_port

    def body(daemon: Daemon, client: ApiClient) -> dict[str, bytes]:
        return {
            "404": raw(port, b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n"),
            "405": raw(port, b"PUT /flows HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"),
            "400": raw(port, b"GARBAGE\r\n\r\n"),
            "411": raw(port, b"POST /flows HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            "413": raw(port, b"POST /flows HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            "505": raw(port, b"GET / HTTP/2.0\r\n\r\n"),
            "json": raw(port, b"POST /flows HTTP/1.1\r\nConnection: close\r\n"
                              b"Content-Type: application/json\r\nContent-Length: 3\r\n\r\n{x}"),
        }

    answers = with_daemon(cfg, body)
    for status in ("404", "405", "400", "411", "413", "505"):
        assert answers[status].startswith(f"HTTP/1.1 {status} ".encode()), answers[status][:80]
    assert b"Allow: DELETE, GET, POST" in answers["405"]
    assert answers["json"].startswith(b"HTTP/1.1 400 ")
    assert b"not valid JSON" in answers["json"]


def test_keep_alive_serves_several_requests(cfg: config.Config) -> None:
    assert cfg.plugins.api is not None
    port = cfg.plugins.api.bind_port
    body_json = json.dumps(EVENT).encode()
    post = (b"POST /flows HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body_json)).encode() + b"\r\n\r\n" + body_json)

    def body(daemon: Daemon, client: ApiClient) -> bytes:
        return raw(port, post + b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")

    answer = with_daemon(cfg, body)
    assert answer.count(b"HTTP/1.1 ") == 2
    assert answer.startswith(b"HTTP/1.1 201 Created")


def test_unreachable_daemon_is_a_clear_error() -> None:
    with pytest.raises(ApiError, match=r"cannot reach the flowlabel daemon at http://127\.0\.0\.1:1"):
        ApiClient("http://127.0.0.1:1").flows()


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999", "http://[::1", "http://host:port", "ftp://host"])
def test_a_bad_url_is_a_clear_error(url: str) -> None:
    with pytest.raises(ApiError, match="not an http:// URL or unix:PATH"):
        ApiClient(url)


def test_flows_survive_a_restart(cfg: config.Config) -> None:
    def first(daemon: Daemon, client: ApiClient) -> int:
        label: int = client.start(EVENT)["flow"]["label"]
        return label

    def second(daemon: Daemon, client: ApiClient) -> list[dict[str, Any]]:
        return client.flows()

    label = with_daemon(cfg, first)
    (flow,) = with_daemon(cfg, second)
    assert flow["label"] == label and flow["dst_port"] == 5777


def test_pid_file_is_written_and_removed(cfg: config.Config) -> None:
    pid_path = Path(cfg.pid_path)

    def body(daemon: Daemon, client: ApiClient) -> str:
        return pid_path.read_text()

    assert with_daemon(cfg, body).strip() == str(os.getpid())
    assert not pid_path.exists()

