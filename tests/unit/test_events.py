"""Tests for flowlabel.events: FlowEvent and its pipe-line, firefly and HTTP API formats."""

from __future__ import annotations

import copy
import ipaddress
import json
import pickle
import random
import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowlabel.events import (
    EventError,
    FlowEvent,
    format_api,
    format_firefly,
    format_line,
    parse_api,
    parse_firefly,
    parse_line,
)
from flowlabel.flow import Flow
from flowlabel.registry import Registry

UTC = timezone.utc
V6A = ipaddress.ip_address("2001:db8:10::5")
V6B = ipaddress.ip_address("2001:db8:20::7")
V4A = ipaddress.ip_address("192.0.2.10")
V4B = ipaddress.ip_address("198.51.100.20")

# Inputs a fuzz case may feed each parser; the count is what the suite promises.
FUZZ_EXAMPLES = 10_000
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def expect_error(field: str, call: Callable[[], object]) -> EventError:
    with pytest.raises(EventError) as info:
        call()
    assert info.value.field == field, str(info.value)
    assert info.value.reason
    return info.value


# -- sample messages as the senders write them --------------------------------------------------

# XRootD: syslog header, microsecond times with +00:00, application and usage members.
XROOTD_START_V6 = (
    "<134>1 2024-03-28T08:58:48.899646+00:00 xrootd01.example.org xrootd - firefly-json - "
    '{"version":1,"flow-lifecycle":{"state":"start","current-time":"2024-03-28T08:58:48.899646+00:00",'
    '"start-time":"2024-03-28T08:58:48.899512+00:00"},"context":{"experiment-id":2,"activity-id":15,'
    '"application":"xrootd 5.6.9"},"flow-id":{"afi":"ipv6","src-ip":"2001:db8:10::5",'
    '"dst-ip":"2001:db8:20::7","protocol":"tcp","src-port":1094,"dst-port":46262}}'
)
XROOTD_END_V6 = (
    "<134>1 2024-03-28T09:12:03.017342+00:00 xrootd01.example.org xrootd - firefly-json - "
    '{"version":1,"flow-lifecycle":{"state":"end","current-time":"2024-03-28T09:12:03.017342+00:00",'
    '"start-time":"2024-03-28T08:58:48.899512+00:00","end-time":"2024-03-28T09:12:03.017103+00:00"},'
    '"context":{"experiment-id":2,"activity-id":15,"application":"xrootd 5.6.9"},'
    '"flow-id":{"afi":"ipv6","src-ip":"2001:db8:10::5","dst-ip":"2001:db8:20::7","protocol":"tcp",'
    '"src-port":1094,"dst-port":46262},"usage":{"received":1048576,"sent":53687091200}}'
)
# dCache: bare JSON, Java Instant times (Z, milliseconds), IPv4 here.
DCACHE_START_V4 = json.dumps(
    {
        "version": 1,
        "flow-lifecycle": {"state": "start", "start-time": "2024-03-28T08:58:49.123Z"},
        "flow-id": {
            "afi": "ipv4",
            "src-ip": "192.0.2.10",
            "dst-ip": "198.51.100.20",
            "protocol": "tcp",
            "src-port": 22125,
            "dst-port": 33811,
        },
        "context": {"experiment-id": 3, "activity-id": 12, "application": "dCache-9.2.14"},
    },
    indent=2,
)
DCACHE_END_V4 = json.dumps(
    {
        "version": 1,
        "flow-lifecycle": {
            "state": "end",
            "start-time": "2024-03-28T08:58:49.123Z",
            "end-time": "2024-03-28T09:01:07.5Z",
        },
        "flow-id": {
            "afi": "ipv4",
            "src-ip": "192.0.2.10",
            "dst-ip": "198.51.100.20",
            "protocol": "tcp",
            "src-port": 22125,
            "dst-port": 33811,
        },
        "context": {"experiment-id": 3, "activity-id": 12, "application": "dCache-9.2.14"},
    }
)
# The flowd family: syslog header, netlink statistics from the kernel, an IPv4 end message.
FLOWD_END_V4 = (
    "<134>1 2024-03-28T09:01:07.612930+00:00 dtn02.example.org flowd - firefly-json - "
    + json.dumps(
        {
            "version": 1,
            "flow-lifecycle": {
                "state": "end",
                "start-time": "2024-03-28T08:58:49.200001+00:00",
                "end-time": "2024-03-28T09:01:07.612001+00:00",
                "current-time": "2024-03-28T09:01:07.612930+00:00",
            },
            "flow-id": {
                "afi": "ipv4",
                "src-ip": "192.0.2.10",
                "dst-ip": "198.51.100.20",
                "protocol": "udp",
                "src-port": 22125,
                "dst-port": 33811,
            },
            "context": {"experiment-id": 5, "activity-id": 10},
            "usage": {"received": 0, "sent": 73400320},
            "netlink": {"rtt": 12.51, "cwnd": 10, "retrans": 0, "pmtu": 1500},
        }
    )
)
# An ongoing report with a non-UTC offset, as a bare JSON datagram.
ONGOING_V6 = (
    '{"version":1,"flow-lifecycle":{"state":"ongoing","start-time":"2024-03-28T09:58:48+01:00"},'
    '"flow-id":{"afi":"ipv6","src-ip":"2001:db8:10::5","dst-ip":"2001:db8:20::7","protocol":"tcp",'
    '"src-port":1094,"dst-port":46262},"context":{"experiment-id":2,"activity-id":15}}'
)

SAMPLES = {
    "xrootd start, syslog, IPv6": (
        XROOTD_START_V6,
        FlowEvent(
            "start",
            "tcp",
            V6A,
            V6B,
            1094,
            46262,
            2,
            15,
            datetime(2024, 3, 28, 8, 58, 48, 899512, UTC),
            None,
            "xrootd 5.6.9",
        ),
    ),
    "xrootd end, syslog, IPv6": (
        XROOTD_END_V6,
        FlowEvent(
            "end",
            "tcp",
            V6A,
            V6B,
            1094,
            46262,
            2,
            15,
            datetime(2024, 3, 28, 8, 58, 48, 899512, UTC),
            datetime(2024, 3, 28, 9, 12, 3, 17103, UTC),
            "xrootd 5.6.9",
        ),
    ),
    "dcache start, bare, IPv4": (
        DCACHE_START_V4,
        FlowEvent(
            "start",
            "tcp",
            V4A,
            V4B,
            22125,
            33811,
            3,
            12,
            datetime(2024, 3, 28, 8, 58, 49, 123000, UTC),
            None,
            "dCache-9.2.14",
        ),
    ),
    "dcache end, bare, IPv4": (
        DCACHE_END_V4,
        FlowEvent(
            "end",
            "tcp",
            V4A,
            V4B,
            22125,
            33811,
            3,
            12,
            datetime(2024, 3, 28, 8, 58, 49, 123000, UTC),
            datetime(2024, 3, 28, 9, 1, 7, 500000, UTC),
            "dCache-9.2.14",
        ),
    ),
    "flowd end, syslog, IPv4": (
        FLOWD_END_V4,
        FlowEvent(
            "end",
            "udp",
            V4A,
            V4B,
            22125,
            33811,
            5,
            10,
            datetime(2024, 3, 28, 8, 58, 49, 200001, UTC),
            datetime(2024, 3, 28, 9, 1, 7, 612001, UTC),
            None,
        ),
    ),
    "ongoing, bare, IPv6, +01:00": (
        ONGOING_V6,
        FlowEvent("ongoing", "tcp", V6A, V6B, 1094, 46262, 2, 15, datetime(2024, 3, 28, 8, 58, 48, 0, UTC)),
    ),
}

PIPE_SAMPLES = [
    "start tcp 2001:db8::1 2345 2001:db8::2 5777 2 15",
    "end udp 192.0.2.1 0 198.51.100.2 65535 511 63",
    "ongoing tcp ::ffff:192.0.2.1 1094 ::1 443 0 0",
]


# -- hypothesis strategies ------------------------------------------------------------------------

address_pairs = st.one_of(
    st.tuples(st.ip_addresses(v=4), st.ip_addresses(v=4)),
    st.tuples(st.ip_addresses(v=6), st.ip_addresses(v=6)),
)
offsets = st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)))
times = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=offsets)


@st.composite
def flow_events(draw: st.DrawFn, *, with_times: bool, min_port: int = 0) -> FlowEvent:
    src, dst = draw(address_pairs)
    state = draw(st.sampled_from(["start", "ongoing", "end"]))
    start = end = application = None
    if with_times:
        start = draw(times)
        end = draw(times) if state == "end" else draw(st.none() | times)
        application = draw(st.none() | st.text(max_size=30))
    return FlowEvent(
        state,
        draw(st.sampled_from(["tcp", "udp"])),
        src,
        dst,
        draw(st.integers(min_port, 65535)),
        draw(st.integers(min_port, 65535)),
        draw(st.integers(0, 511)),
        draw(st.integers(0, 63)),
        start,
        end,
        application,
    )


# -- FlowEvent ------------------------------------------------------------------------------------


def test_flow_event_is_immutable_hashable_and_has_a_flow() -> None:
    event = parse_line(PIPE_SAMPLES[0])
    assert event.flow == Flow(
        "tcp", ipaddress.ip_address("2001:db8::1"), ipaddress.ip_address("2001:db8::2"), 2345, 5777
    )
    assert {event: 1}[parse_line(PIPE_SAMPLES[0])] == 1
    with pytest.raises(AttributeError):
        event.state = "end"  # type: ignore[misc]


def test_of_checks_and_normalises() -> None:
    event = FlowEvent.of(
        "START", "TCP", "2001:db8::1", V6B, 1, 2, 3, 4, "2024-03-28T09:58:48+01:00", None, "app"
    )
    assert event == FlowEvent(
        "start", "tcp", ipaddress.ip_address("2001:db8::1"), V6B, 1, 2, 3, 4,
        datetime(2024, 3, 28, 8, 58, 48, tzinfo=UTC), None, "app",
    )  # fmt: skip
    assert event.start_time is not None and event.start_time.utcoffset() == timedelta(0)
    assert event.validate() == event


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"state": "stop"}, "state"),
        ({"protocol": 6}, "protocol"),
        ({"src": "nope"}, "src"),
        ({"dst": "192.0.2.1"}, "dst"),
        ({"sport": 65536}, "sport"),
        ({"dport": True}, "dport"),
        ({"experiment": 512}, "experiment"),
        ({"activity": -1}, "activity"),
        ({"activity": 2.0}, "activity"),
        ({"start_time": datetime(2024, 1, 1)}, "start_time"),
        ({"end_time": "tomorrow"}, "end_time"),
        ({"application": 5}, "application"),
    ],
)
def test_of_rejects(kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {
        "state": "start",
        "protocol": "tcp",
        "src": V6A,
        "dst": V6B,
        "sport": 1,
        "dport": 2,
        "experiment": 2,
        "activity": 15,
    }
    args.update(kwargs)
    expect_error(field, lambda: FlowEvent.of(**args))


def test_event_error_text_and_pickling() -> None:
    error = expect_error("dst_port", lambda: parse_line("start tcp ::1 1 ::2 99999 2 15"))
    assert str(error) == "field 'dst_port': must be an integer 0-65535, got '99999'"
    assert isinstance(error, ValueError)
    copied = pickle.loads(pickle.dumps(error))
    assert (copied.field, copied.reason, str(copied)) == (error.field, error.reason, str(error))


# -- pipe lines ------------------------------------------------------------------------------------


def test_parse_line_sample() -> None:
    assert parse_line(PIPE_SAMPLES[0]) == FlowEvent(
        "start",
        "tcp",
        ipaddress.ip_address("2001:db8::1"),
        ipaddress.ip_address("2001:db8::2"),
        2345,
        5777,
        2,
        15,
    )


def test_parse_line_is_liberal_about_space_and_case() -> None:
    line = "\t  START \t TCP  2001:DB8::1   2345\v2001:db8::2 05777  002 15 \r\n"
    assert parse_line(line) == parse_line(PIPE_SAMPLES[0])
    assert parse_line(line.encode()) == parse_line(PIPE_SAMPLES[0])
    assert parse_line(bytearray(line.encode())) == parse_line(PIPE_SAMPLES[0])


def test_parse_line_ipv4() -> None:
    event = parse_line(PIPE_SAMPLES[1])
    assert (event.src, event.dst, event.sport, event.dport) == (
        ipaddress.ip_address("192.0.2.1"),
        ipaddress.ip_address("198.51.100.2"),
        0,
        65535,
    )
    assert (event.experiment, event.activity) == (511, 63)


def test_parse_line_with_registry_names(registry: Registry) -> None:
    event = parse_line("start tcp ::1 1 ::2 2 ATLAS production-input", registry)
    assert (event.experiment, event.activity) == (2, 15)
    assert parse_line("start tcp ::1 1 ::2 2 cms Upload/Download_(Job)", registry).activity == 19
    assert parse_line("start tcp ::1 1 ::2 2 3 Debug", registry)[6:8] == (3, 8)
    assert parse_line("start tcp ::1 1 ::2 2 lhcb 60", registry)[6:8] == (4, 60)
    assert parse_line("start tcp ::1 1 ::2 2 300 5", registry)[6:8] == (300, 5)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("", "line"),
        ("   \n", "line"),
        ("start tcp ::1 1 ::2 2 2", "line"),
        ("start tcp ::1 1 ::2 2 2 15 extra", "line"),
        (b"start tcp ::1 1 ::2 2 2 \xff", "line"),
        ("begin tcp ::1 1 ::2 2 2 15", "state"),
        ("start sctp ::1 1 ::2 2 2 15", "protocol"),
        ("start tcp ::g 1 ::2 2 2 15", "src_ip"),
        ("start tcp fe80::1%eth0 1 ::2 2 2 15", "src_ip"),
        ("start tcp 192.0.2.01 1 192.0.2.2 2 2 15", "src_ip"),
        ("start tcp ::1 -1 ::2 2 2 15", "src_port"),
        ("start tcp ::1 +1 ::2 2 2 15", "src_port"),
        ("start tcp ::1 1 ::2 65536 2 15", "dst_port"),
        ("start tcp ::1 1 ::2 0x10 2 15", "dst_port"),
        ("start tcp ::1 1 ::2 \u0663 2 15", "dst_port"),
        ("start tcp ::1 1 ::2 000080 2 15", "dst_port"),
        ("start tcp ::1 1 192.0.2.2 2 2 15", "dst_ip"),
        ("start tcp ::1 1 ::2 2 512 15", "experiment"),
        ("start tcp ::1 1 ::2 2 -1 15", "experiment"),
        ("start tcp ::1 1 ::2 2 atlas 15", "experiment"),
        ("start tcp ::1 1 ::2 2 2 64", "activity"),
        ("start tcp ::1 1 ::2 2 2 1.5", "activity"),
        ("start tcp ::1 1 ::2 2 2 " + "9" * 5000, "activity"),
    ],
)
def test_parse_line_rejects(line: str | bytes, field: str) -> None:
    expect_error(field, lambda: parse_line(line))


@pytest.mark.parametrize(
    ("line", "field", "hint"),
    [
        ("start tcp ::1 1 ::2 2 atlsa 15", "experiment", "did you mean 'atlas'"),
        ("start tcp ::1 1 ::2 2 atlas Debugg", "activity", "did you mean 'Debug'"),
        ("start tcp ::1 1 ::2 2 300 Debug", "activity", "need experiment 300 in the registry"),
        ("start tcp ::1 1 ::2 2 atlas 64", "activity", "0-63"),
    ],
)
def test_parse_line_rejects_unknown_names(registry: Registry, line: str, field: str, hint: str) -> None:
    assert hint in str(expect_error(field, lambda: parse_line(line, registry)))


def test_parse_line_rejects_other_types() -> None:
    expect_error("line", lambda: parse_line(None))  # type: ignore[arg-type]


def test_format_line() -> None:
    for line in PIPE_SAMPLES:
        event = parse_line(line)
        assert parse_line(format_line(event)) == event
    # How IPv4-mapped IPv6 addresses print depends on the Python version.
    assert [format_line(parse_line(line)) for line in PIPE_SAMPLES[:2]] == PIPE_SAMPLES[:2]


@given(flow_events(with_times=False))
def test_pipe_round_trip(event: FlowEvent) -> None:
    assert parse_line(format_line(event)) == event
    assert parse_line(format_line(event).encode()) == event


@given(
    st.one_of(
        st.ip_addresses().map(str), st.text(alphabet="0123456789abcdefABCDEF:.%", min_size=1, max_size=45)
    )
)
def test_addresses_are_judged_like_ipaddress(text: str) -> None:
    try:
        expected = ipaddress.ip_address(text) if "%" not in text else None
    except ValueError:
        expected = None
    line = f"start tcp {text} 1 {text} 2 2 15"
    if expected is None:
        expect_error("src_ip", lambda: parse_line(line))
    else:
        assert parse_line(line).src == expected


# -- fireflies -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLES)
def test_parse_published_firefly_forms(name: str) -> None:
    message, expected = SAMPLES[name]
    for data in (message, message.encode()):
        event = parse_firefly(data)
        assert event == expected
        assert event.start_time is not None and event.start_time.tzinfo is UTC


def test_firefly_liberal_extras() -> None:
    doc = json.loads(ONGOING_V6)
    doc["flow-lifecycle"]["state"] = "ONGOING"
    doc["flow-id"]["afi"] = "IPv6"
    doc["flow-id"]["protocol"] = "TCP"
    doc["flow-id"]["src-port"] = 1094.0
    doc["flow-id"]["flow-label"] = 12345
    doc["something-new"] = {"x": [1, 2]}
    expected = SAMPLES["ongoing, bare, IPv6, +01:00"][1]
    assert parse_firefly(json.dumps(doc)) == expected
    # A C sender may count the terminating NUL into the datagram.
    assert parse_firefly(ONGOING_V6.encode() + b"\x00") == expected
    assert parse_firefly("\n " + ONGOING_V6 + "\r\n") == expected


@pytest.mark.parametrize(
    "header",
    [
        "<134>1 2024-03-28T08:58:48.899646+00:00 host app - firefly-json - ",
        "<6>1 - - - - - - ",
        "<134>1 2024-03-28T08:58:48Z host app 1234 firefly-json - \ufeff",
        '<134>1 2024-03-28T08:58:48Z host app - firefly-json [origin ip="192.0.2.1"][x@1 a="b\\"]c"] ',
    ],
)
def test_firefly_syslog_header_forms(header: str) -> None:
    assert parse_firefly(header + ONGOING_V6) == SAMPLES["ongoing, bare, IPv6, +01:00"][1]


def json_part(message: str) -> str:
    """The JSON object of a firefly, without any syslog header."""
    return message[message.index("{") :]


def edit(message: str, change: Callable[[dict[str, Any]], object]) -> str:
    doc = json.loads(message)
    change(doc)
    return json.dumps(doc)


def setter(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split("/")

    def change(doc: dict[str, Any]) -> None:
        for key in parents:
            doc = doc[key]
        doc[last] = value

    return change


def remover(path: str) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split("/")

    def change(doc: dict[str, Any]) -> None:
        for key in parents:
            doc = doc[key]
        del doc[last]

    return change


FIREFLY_BAD = [
    ("", "message"),
    ("{", "message"),
    ("[1]", "message"),
    ("null", "message"),
    ("[" * 100_000, "message"),
    ('{"version": 1e999999}', "version"),
    ("<134>1 2024-03-28T08:58:48Z host app", "syslog"),
    ("<134>1 2024-03-28T08:58:48Z host app - firefly-json [unterminated " + ONGOING_V6, "syslog"),
    ("<134>1 2024-03-28T08:58:48Z  host app - firefly-json - " + ONGOING_V6, "syslog"),
    ("<x>1 2024-03-28T08:58:48Z host app - firefly-json - " + ONGOING_V6, "syslog"),
    ("<134>1 2024-03-28T08:58:48Z host app - firefly-json -" + ONGOING_V6, "syslog"),
    (edit(ONGOING_V6, remover("version")), "version"),
    (edit(ONGOING_V6, setter("version", 2)), "version"),
    (edit(ONGOING_V6, setter("version", "1")), "version"),
    (edit(ONGOING_V6, setter("version", True)), "version"),
    (edit(ONGOING_V6, remover("flow-lifecycle")), "flow-lifecycle"),
    (edit(ONGOING_V6, setter("flow-lifecycle", [])), "flow-lifecycle"),
    (edit(ONGOING_V6, remover("flow-lifecycle/state")), "flow-lifecycle.state"),
    (edit(ONGOING_V6, setter("flow-lifecycle/state", "stop")), "flow-lifecycle.state"),
    (edit(ONGOING_V6, setter("flow-lifecycle/state", ["end"])), "flow-lifecycle.state"),
    (edit(ONGOING_V6, remover("flow-lifecycle/start-time")), "flow-lifecycle.start-time"),
    (edit(ONGOING_V6, setter("flow-lifecycle/start-time", 1711616328)), "flow-lifecycle.start-time"),
    (edit(ONGOING_V6, setter("flow-lifecycle/start-time", "yesterday")), "flow-lifecycle.start-time"),
    (
        edit(ONGOING_V6, setter("flow-lifecycle/start-time", "2024-02-30T00:00:00Z")),
        "flow-lifecycle.start-time",
    ),
    (
        edit(ONGOING_V6, setter("flow-lifecycle/start-time", "2024-03-28T08:58:48")),
        "flow-lifecycle.start-time",
    ),
    (
        edit(ONGOING_V6, setter("flow-lifecycle/start-time", "2024-03-28T23:59:60Z")),
        "flow-lifecycle.start-time",
    ),
    (
        edit(ONGOING_V6, setter("flow-lifecycle/start-time", "0001-01-01T00:00:00+01:00")),
        "flow-lifecycle.start-time",
    ),
    (
        edit(ONGOING_V6, setter("flow-lifecycle/start-time", "2024-03-28T08:58:48+24:00")),
        "flow-lifecycle.start-time",
    ),
    (edit(ONGOING_V6, setter("flow-lifecycle/state", "end")), "flow-lifecycle.end-time"),
    (edit(json_part(XROOTD_END_V6), setter("flow-lifecycle/end-time", None)), "flow-lifecycle.end-time"),
    (edit(ONGOING_V6, setter("flow-lifecycle/current-time", 5)), "flow-lifecycle.current-time"),
    (edit(ONGOING_V6, remover("flow-id")), "flow-id"),
    (edit(ONGOING_V6, setter("flow-id", "2001:db8::1")), "flow-id"),
    (edit(ONGOING_V6, remover("flow-id/afi")), "flow-id.afi"),
    (edit(ONGOING_V6, setter("flow-id/afi", "ipv5")), "flow-id.afi"),
    (edit(ONGOING_V6, setter("flow-id/afi", "ipv4")), "flow-id.src-ip"),
    (edit(ONGOING_V6, setter("flow-id/dst-ip", "192.0.2.1")), "flow-id.dst-ip"),
    (edit(ONGOING_V6, setter("flow-id/src-ip", 42)), "flow-id.src-ip"),
    (edit(ONGOING_V6, remover("flow-id/dst-ip")), "flow-id.dst-ip"),
    (edit(ONGOING_V6, setter("flow-id/protocol", "icmp")), "flow-id.protocol"),
    (edit(ONGOING_V6, setter("flow-id/src-port", 0)), "flow-id.src-port"),
    (edit(ONGOING_V6, setter("flow-id/src-port", "1094")), "flow-id.src-port"),
    (edit(ONGOING_V6, setter("flow-id/src-port", 1094.5)), "flow-id.src-port"),
    (edit(ONGOING_V6, setter("flow-id/dst-port", 65536)), "flow-id.dst-port"),
    (edit(ONGOING_V6, setter("flow-id/dst-port", False)), "flow-id.dst-port"),
    (edit(ONGOING_V6, remover("context")), "context"),
    (edit(ONGOING_V6, setter("context", None)), "context"),
    (edit(ONGOING_V6, remover("context/experiment-id")), "context.experiment-id"),
    (edit(ONGOING_V6, setter("context/experiment-id", "2")), "context.experiment-id"),
    (edit(ONGOING_V6, setter("context/experiment-id", 512)), "context.experiment-id"),
    (edit(ONGOING_V6, setter("context/activity-id", 64)), "context.activity-id"),
    (edit(ONGOING_V6, setter("context/activity-id", -1)), "context.activity-id"),
    (edit(ONGOING_V6, setter("context/application", 5)), "context.application"),
    (edit(ONGOING_V6, setter("context/application", None)), "context.application"),
    (b"\xef\xbb\xbf" + ONGOING_V6.encode(), "message"),
    (ONGOING_V6.encode("utf-16"), "message"),
]


@pytest.mark.parametrize(("message", "field"), FIREFLY_BAD)
def test_parse_firefly_rejects(message: str | bytes, field: str) -> None:
    expect_error(field, lambda: parse_firefly(message))


def test_parse_firefly_rejects_other_types() -> None:
    expect_error("message", lambda: parse_firefly(1234))  # type: ignore[arg-type]


NOW = datetime(2024, 3, 28, 9, 0, 0, 123456, UTC)


def test_format_firefly_bare() -> None:
    event = SAMPLES["xrootd end, syslog, IPv6"][1]
    data = format_firefly(event, now=NOW)
    assert json.loads(data) == {
        "version": 1,
        "flow-lifecycle": {
            "state": "end",
            "start-time": "2024-03-28T08:58:48.899512Z",
            "end-time": "2024-03-28T09:12:03.017103Z",
            "current-time": "2024-03-28T09:00:00.123456Z",
        },
        "flow-id": {
            "afi": "ipv6",
            "src-ip": "2001:db8:10::5",
            "dst-ip": "2001:db8:20::7",
            "protocol": "tcp",
            "src-port": 1094,
            "dst-port": 46262,
        },
        "context": {"experiment-id": 2, "activity-id": 15, "application": "xrootd 5.6.9"},
    }


def test_format_firefly_syslog() -> None:
    event = SAMPLES["dcache start, bare, IPv4"][1]
    data = format_firefly(event, syslog=True, hostname="dcache-pool.example.org", appname="dcache", now=NOW)
    header, _, payload = data.decode().partition(" {")
    assert header == "<134>1 2024-03-28T09:00:00.123456Z dcache-pool.example.org dcache - firefly-json -"
    assert json.loads("{" + payload)["flow-id"]["afi"] == "ipv4"
    assert parse_firefly(data) == event
    default = format_firefly(event, syslog=True, now=NOW).decode()
    assert re.match(r"<134>1 \S+ \S+ flowlabel - firefly-json - \{", default)


def test_format_firefly_fills_missing_times_with_now() -> None:
    event = parse_line("end tcp ::1 1 ::2 2 2 15")
    doc = json.loads(format_firefly(event, now=NOW))
    life = doc["flow-lifecycle"]
    assert life["start-time"] == life["end-time"] == "2024-03-28T09:00:00.123456Z"
    start = json.loads(format_firefly(parse_line("start tcp ::1 1 ::2 2 2 15"), now=NOW))
    assert "end-time" not in start["flow-lifecycle"]
    assert "application" not in start["context"]


def test_format_firefly_is_ascii() -> None:
    event = SAMPLES["ongoing, bare, IPv6, +01:00"][1]._replace(application="caf\u00e9 \ud800 \u2028")
    data = format_firefly(event, now=NOW)
    data.decode("ascii")
    assert parse_firefly(data) == event


def test_format_firefly_rejects_what_the_schema_cannot_carry() -> None:
    event = parse_line("start tcp ::1 0 ::2 2 2 15")
    expect_error("sport", lambda: format_firefly(event))
    expect_error("experiment", lambda: format_firefly(event._replace(sport=1, experiment=600)))
    with pytest.raises(ValueError, match="hostname"):
        format_firefly(event._replace(sport=1), syslog=True, hostname="two words")
    with pytest.raises(ValueError, match="appname"):
        format_firefly(event._replace(sport=1), syslog=True, appname="x" * 49)


@given(flow_events(with_times=True, min_port=1), st.booleans())
def test_firefly_round_trip(event: FlowEvent, syslog: bool) -> None:
    assert parse_firefly(format_firefly(event, syslog=syslog, hostname="h.example.org")) == event


# -- the published schema ---------------------------------------------------------------------------


def load_lenient_json(text: str) -> Any:
    """json.loads that also takes the trailing commas the published schemas contain."""
    out = []
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            escaped = ch == "\\" and not escaped
            if ch == '"' and not escaped:
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == ",":
            rest = text[i + 1 :].lstrip()
            if rest[:1] in ("}", "]"):
                continue
        out.append(ch)
    return json.loads("".join(out))


def test_lenient_loader() -> None:
    assert load_lenient_json('{"a": [1, 2,], "b": "x,}",\n}') == {"a": [1, 2], "b": "x,}"}


@pytest.fixture(scope="module")
def schema_validator(firefly_schema_path: Path) -> Any:
    jsonschema = pytest.importorskip(
        "jsonschema", reason="jsonschema is not installed (pip install jsonschema)"
    )
    schema = load_lenient_json(firefly_schema_path.read_text())
    cls = jsonschema.Draft202012Validator
    cls.check_schema(schema)
    # Without a date-time checker the schema would accept any string as a time.
    assert "date-time" in cls.FORMAT_CHECKER.checkers, "install jsonschema[format-nongpl]"
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@pytest.mark.parametrize("name", SAMPLES)
def test_samples_follow_the_schema(schema_validator: Any, name: str) -> None:
    message = SAMPLES[name][0]
    schema_validator.validate(json.loads(json_part(message)))


@settings(max_examples=300, deadline=None)
@given(flow_events(with_times=True, min_port=1))
def test_written_fireflies_follow_the_schema(schema_validator: Any, event: FlowEvent) -> None:
    schema_validator.validate(json.loads(format_firefly(event)))
    schema_validator.validate(json.loads(format_firefly(event._replace(start_time=None, end_time=None))))


# -- HTTP API ---------------------------------------------------------------------------------------

API_SAMPLE = {
    "state": "start",
    "protocol": "tcp",
    "src_ip": "2001:db8::1",
    "src_port": 2345,
    "dst_ip": "2001:db8::2",
    "dst_port": 5777,
    "experiment": "atlas",
    "activity": "Production Input",
    "start_time": "2024-03-28T08:58:48.899646Z",
    "application": "xrootd 5.6.9",
}


def test_parse_api_sample(registry: Registry) -> None:
    event = parse_api(API_SAMPLE, registry)
    assert event == FlowEvent(
        "start",
        "tcp",
        ipaddress.ip_address("2001:db8::1"),
        ipaddress.ip_address("2001:db8::2"),
        2345,
        5777,
        2,
        15,
        datetime(2024, 3, 28, 8, 58, 48, 899646, UTC),
        None,
        "xrootd 5.6.9",
    )
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


def api(**changes: object) -> dict[str, object]:
    doc: dict[str, object] = {**API_SAMPLE, "experiment": 2, "activity": 15}
    for key, value in changes.items():
        if value is REMOVE:
            del doc[key]
        else:
            doc[key] = value
    return doc


REMOVE = object()


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


# -- fuzzing: only EventError may escape ------------------------------------------------------------

JSON_ODDITIES: list[object] = [
    None, True, False, 0, -1, 1, 1.5, 1e308, 2**63, "", "x", "start", "END", "tcp", "ipv4", "ipv6",
    "::1", "192.0.2.1", "fe80::1%eth0", "2024-03-28T08:58:48Z", "2024-13-40T25:61:61Z", [], {}, [1, "a"],
    {"a": {"b": None}}, 65535, 65536, 511, 512, 63, 64, "\ud800", "\x00",
]  # fmt: skip
TOKENS = [
    b"\x00", b"\xff", b"\xc3\x28", b"\xe2\x80\xa8", b" ", b"\t", b"\n", b'"', b"\\", b"{", b"}", b"[", b"]",
    b":", b",", b"-", b"0", b"9" * 30, b"1e999", b"null", b"true", b"NaN", b"%eth0", b"::", b".", b"<134>1 ",
    b"[" * 50, b"\xef\xbb\xbf", "\u0663".encode(), b"START", b"end", b"udp", b"65536", b"512",
]  # fmt: skip


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """Damage ``data`` in one to four random ways."""
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        i = rng.randrange(len(buf) + 1)
        j = min(len(buf), i + rng.randrange(1, 12))
        op = rng.randrange(8)
        if op == 0:
            del buf[i:j]
        elif op == 1:
            buf[i:i] = rng.choice(TOKENS)
        elif op == 2 and i < len(buf):
            buf[i] = rng.randrange(256)
        elif op == 3:
            buf[i:i] = buf[i:j] * rng.randrange(1, 4)
        elif op == 4:
            del buf[i:]
        elif op == 5:
            k = rng.randrange(len(buf) + 1)
            buf[i:j], buf[k:k] = b"", buf[i:j]
        elif op == 6:
            buf[i:j] = bytes(buf[i:j]).swapcase()
        else:
            buf[i:j] = rng.choice(TOKENS)
    return bytes(buf)


def json_paths(doc: object, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from json_paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from json_paths(value, (*prefix, index))


def mutate_json(rng: random.Random, doc: Any) -> Any:
    """Change, drop or add one member somewhere in ``doc`` (a deep copy)."""
    doc = copy.deepcopy(doc)
    path = rng.choice([p for p in json_paths(doc) if p])
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    op = rng.randrange(4)
    if op == 0:
        del parent[path[-1]]
    elif op == 1 and isinstance(parent, dict):
        parent[rng.choice(["extra", "state", "src-ip", "afi", "src_ip", "Version"])] = rng.choice(
            JSON_ODDITIES
        )
    else:
        parent[path[-1]] = copy.deepcopy(rng.choice(JSON_ODDITIES))
    return doc


def only_event_errors(parse: Callable[[Any], FlowEvent], data: Any) -> None:
    try:
        event = parse(data)
    except EventError as exc:
        # The field may be empty: an API object can have "" as an unknown key.
        assert isinstance(exc.field, str)
        assert isinstance(exc.reason, str) and exc.reason
        str(exc)
    else:
        # Whatever a parser accepts is a valid event.
        assert isinstance(event, FlowEvent)
        assert event.validate() == event


FIREFLY_SEEDS = [s.encode() for s, _ in SAMPLES.values()]
PIPE_SEEDS = [line.encode() for line in PIPE_SAMPLES] + [b"start tcp ::1 1 ::2 2 atlas Production-Input"]
API_SEEDS = [json.dumps(API_SAMPLE).encode(), json.dumps(api()).encode()]


def fuzz_inputs(seeds: list[bytes]) -> st.SearchStrategy[Any]:
    """Arbitrary bytes and text, and valid messages damaged at random."""
    damaged = st.builds(mutate_bytes, st.randoms(use_true_random=False), st.sampled_from(seeds))
    return st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300),
        damaged,
        damaged.map(lambda b: b.decode("utf-8", "replace")),
    )


def fuzz_json(seeds: list[bytes]) -> st.SearchStrategy[Any]:
    """Valid messages with one member changed, dropped or added."""

    def build(rng: random.Random, seed: bytes) -> str:
        text = seed.decode()
        head, brace, body = text.partition("{")
        return head + json.dumps(mutate_json(rng, json.loads(brace + body)))

    return st.builds(build, st.randoms(use_true_random=False), st.sampled_from(seeds))


@FUZZ
@given(fuzz_inputs(PIPE_SEEDS))
def test_fuzz_parse_line(data: Any) -> None:
    only_event_errors(parse_line, data)


@settings(FUZZ, max_examples=2000)
@given(fuzz_inputs(PIPE_SEEDS))
def test_fuzz_parse_line_with_registry(registry: Registry, data: Any) -> None:
    only_event_errors(lambda d: parse_line(d, registry), data)


@FUZZ
@given(st.one_of(fuzz_inputs(FIREFLY_SEEDS), fuzz_json(FIREFLY_SEEDS)))
def test_fuzz_parse_firefly(data: Any) -> None:
    only_event_errors(parse_firefly, data)


@FUZZ
@given(st.one_of(fuzz_inputs(API_SEEDS), fuzz_json(API_SEEDS)))
def test_fuzz_parse_api(registry: Registry, data: Any) -> None:
    only_event_errors(lambda d: parse_api(d, registry), data)


@pytest.mark.parametrize(
    ("parse", "seeds"),
    [
        (parse_line, PIPE_SEEDS),
        (parse_firefly, FIREFLY_SEEDS),
        (parse_api, API_SEEDS),
    ],
    ids=["pipe", "firefly", "api"],
)
def test_fuzz_mutations_seeded(parse: Callable[[Any], FlowEvent], seeds: list[bytes]) -> None:
    # A fixed-seed sweep, cheaper per input than hypothesis, over many more mutations.
    rng = random.Random(1234)
    for _ in range(20_000):
        data = mutate_bytes(rng, rng.choice(seeds))
        only_event_errors(parse, data if rng.random() < 0.5 else data.decode("utf-8", "replace"))


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fuzz_json(FIREFLY_SEEDS))
def test_schema_valid_fireflies_are_accepted(schema_validator: Any, message: str) -> None:
    """Whatever the published schema accepts parses, except IDs too large for the flow label."""
    doc = json.loads(json_part(message))
    if not schema_validator.is_valid(doc) or "%" in json.dumps(doc.get("flow-id")):
        return
    try:
        parse_firefly(message)
    except EventError as exc:
        assert exc.field in ("context.experiment-id", "context.activity-id"), str(exc)
