"""flowd-go's API routes on flowlabel's daemon: ``GET /``, ``POST /flow``, ``/dummy/start|end``.

Bodies are flowd-go's own test bodies (``plugins/api/testdata``) with IDs a flow
label can carry, and the 2.4 form with ``"[addr]:port"`` strings.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_api import cfg, raw, with_daemon  # noqa: F401  (cfg is a fixture)

from flowlabel import config
from flowlabel.api_client import ApiClient, ApiError
from flowlabel.daemon import Daemon
from flowlabel.events import EventError
from flowlabel.events.flowdgo import format_flowd_go, parse_flowd_go
from flowlabel.label import decode

# flowd-go's plugins/api/testdata/start.json, with experiment 2 / activity 3 for its 65535s.
START = {
    "State": 2, "Protocol": 0, "Family": 10,
    "Src": {"IP": "2001:db8::1", "Port": 2345}, "Dst": {"IP": "2001:db8::2", "Port": 5777},
    "Experiment": 2, "Activity": 3,
    "StartTs": "0001-01-01T00:00:00Z", "EndTs": "2025-02-06T13:21:30.893064962+01:00",
    "CurrentTs": "0001-01-01T00:00:00Z",
}


def post_flow(client: ApiClient, document: Any) -> Any:
    return client.request("POST", "/flow", document)


def test_post_flow_starts_and_ends_a_flow(cfg: config.Config) -> None:  # noqa: F811
    def body(daemon: Daemon, client: ApiClient) -> None:
        echoed = post_flow(client, START)
        assert echoed["State"] == 2 and echoed["Src"] == {"IP": "2001:db8::1", "Port": 2345}
        assert echoed["Experiment"] == 2 and echoed["StartTs"] != "0001-01-01T00:00:00Z"
        (flow,) = client.flows()
        assert decode(flow["label"])[:2] == (2, 3) and flow["source"] == "api"
        # flowd-go 2.4 writes addresses as netip.AddrPort strings; names match in any case.
        post_flow(client, {"state": 3, "protocol": 0, "src": "[2001:db8::1]:2345",
                           "dst": "[2001:db8::2]:5777", "experiment": 2, "activity": 3})
        assert client.flows() == []

    with_daemon(cfg, body)


def test_post_flow_errors_answer_as_flowd_go_does(cfg: config.Config) -> None:  # noqa: F811
    def body(daemon: Daemon, client: ApiClient) -> None:
        with pytest.raises(ApiError) as info:
            post_flow(client, {**START, "Experiment": 65535})
        assert info.value.status == 400 and "Experiment" in str(info.value)
        port = cfg.plugins.api.bind_port  # type: ignore[union-attr]
        answer = raw(port, b"POST /flow HTTP/1.1\r\n"
                           b"Content-Type: application/x-www-form-urlencoded\r\n"
                           b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
        assert answer.startswith(b"HTTP/1.1 415 ")
        assert client.flows() == []
        assert daemon.metrics.total("rejected", "api") == 1  # the form body never reached the route

    with_daemon(cfg, body)


def test_root_and_dummy_routes(cfg: config.Config) -> None:  # noqa: F811
    def body(daemon: Daemon, client: ApiClient) -> None:
        routes = client.request("GET", "/")["ApiRoutes"]
        assert {"method": "POST", "path": "/flow", "name": "POST /flow"} in routes
        assert {(r["method"], r["path"]) for r in routes} >= {("GET", "/dummy/start"), ("GET", "/dummy/end")}
        started = client.request("GET", "/dummy/start")
        assert started["Src"] == {"IP": "::1", "Port": 2345} and started["State"] == 2
        flows = client.flows()
        assert [(f["src_port"], f["dst_port"], f["experiment"]) for f in flows] == [(2345, 5777, 511)]
        assert client.request("GET", "/dummy/end")["State"] == 3
        assert client.flows() == []

    with_daemon(cfg, body)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({**START, "State": 7}, "State"),
        ({**START, "Protocol": "icmp"}, "Protocol"),
        ({**START, "Family": 2}, "Family"),
        ({**START, "Family": [10]}, "Family"),  # not hashable: once a TypeError, an answer of 500
        ({**START, "Family": {"v": 10}}, "Family"),
        ({**START, "Family": 10.5}, "Family"),
        ({**START, "Src": "[2001:db8::1]:\u00b2"}, "Src"),  # a digit int() refuses
        ({**START, "Src": "[2001:db8::1]:" + "1" * 5000}, "Src"),  # longer than int() reads
        ({**START, "Src": "2001:db8::1"}, "Src"),
        ({**START, "Dst": {"IP": "192.0.2.1", "Port": 1}}, "Dst"),
        ({**START, "Activity": 64}, "Activity"),
        ({k: v for k, v in START.items() if k != "Dst"}, "Dst"),
        ([START], "flow"),
    ],
)
def test_parse_flowd_go_names_the_bad_member(document: Any, field: str) -> None:
    with pytest.raises(EventError) as info:
        parse_flowd_go(document)
    assert info.value.field == field


def test_flowd_go_round_trip() -> None:
    event = parse_flowd_go(START)
    assert event.end_time is not None and event.start_time is None
    assert parse_flowd_go(format_flowd_go(event)) == event
