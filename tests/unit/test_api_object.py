"""The HTTP API's event object: parsed, refused, written."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from event_samples import API_SAMPLE, REMOVE, SAMPLE_EVENT, SAMPLES, UTC, api, expect_error, flow_events
from hypothesis import given

from flowlabel.events import FlowEvent, format_api, parse_api
from flowlabel.registry import Registry


def test_parse_api_sample(registry: Registry) -> None:
    event = parse_api(API_SAMPLE, registry)
    assert event == SAMPLE_EVENT._replace(start_time=datetime(2024, 3, 28, 8, 58, 48, 899646, UTC),
                                          application="xrootd 5.6.9")
    assert parse_api(json.dumps(API_SAMPLE), registry) == event
    assert parse_api(json.dumps(API_SAMPLE).encode(), registry) == event
    numeric = {**API_SAMPLE, "experiment": 2, "activity": "15", "end_time": None, "application": None}
    assert parse_api(numeric) == event._replace(application=None)


def test_format_api() -> None:
    event = SAMPLES["flowd end, syslog, IPv4"][1]
    assert format_api(event) == {
        "state": "end",
        "protocol": "udp",
        "src_ip": "192.0.2.10",
        "src_port": 22125,
        "dst_ip": "198.51.100.20",
        "dst_port": 33811,
        "experiment": 5,
        "activity": 10,
        "start_time": "2024-03-28T08:58:49.200001Z",
        "end_time": "2024-03-28T09:01:07.612001Z",
        "application": None,
    }


@given(flow_events(with_times=True))
def test_api_round_trip(event: FlowEvent) -> None:
    assert parse_api(format_api(event)) == event
    assert parse_api(json.dumps(format_api(event)).encode()) == event





@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ("{", "event"),
        ("[]", "event"),
        (b"\xff", "event"),
        (None, "event"),
        ([API_SAMPLE], "event"),
        (api(colour="blue"), "colour"),
        (api(dst_port=REMOVE), "dst_port"),
        (api(state=REMOVE), "state"),
        (api(state="stop"), "state"),
        (api(protocol=6), "protocol"),
        (api(src_ip="localhost"), "src_ip"),
        (api(src_ip=None), "src_ip"),
        (api(dst_ip="192.0.2.1"), "dst_ip"),
        (api(src_port="80"), "src_port"),
        (api(src_port=-1), "src_port"),
        (api(dst_port=True), "dst_port"),
        (api(experiment="atlas"), "experiment"),
        (api(experiment=True), "experiment"),
        (api(experiment=512), "experiment"),
        (api(experiment=""), "experiment"),
        (api(activity=[15]), "activity"),
        (api(activity=64), "activity"),
        (api(start_time="28/03/2024"), "start_time"),
        (api(start_time=1711616328), "start_time"),
        (api(end_time="2024-03-28T08:58:48"), "end_time"),
        (api(application=5), "application"),
    ],
)
def test_parse_api_rejects(obj: Any, field: str) -> None:
    expect_error(field, lambda: parse_api(obj))


@pytest.mark.parametrize("key", ["state", "src_ip", "src_port", "experiment", "activity", "start_time"])
def test_parse_api_survives_absurd_python_values(registry: Registry, key: str) -> None:
    nested: list[Any] = []
    for _ in range(100_000):
        nested = [nested]
    expect_error(key, lambda: parse_api(api(**{key: nested}), registry))
    expect_error(key, lambda: parse_api(api(**{key: 10**10000}), registry))


def test_parse_api_names_need_a_registry(registry: Registry) -> None:
    assert "names need a registry" in str(expect_error("experiment", lambda: parse_api(API_SAMPLE)))
    expect_error("activity", lambda: parse_api({**API_SAMPLE, "activity": "Prod Input"}, registry))
    expect_error("experiment", lambda: parse_api({**API_SAMPLE, "experiment": "atlass"}, registry))
