"""The firefly message: the published forms, what is refused, what is written, the schema."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import pytest
from event_samples import (
    ONGOING_V6,
    SAMPLES,
    UTC,
    XROOTD_END_V6,
    edit,
    expect_error,
    flow_events,
    json_part,
    load_lenient_json,
    remover,
    setter,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from flowlabel import times
from flowlabel.events import (
    EventError,
    FlowEvent,
    OngoingFirefly,
    format_firefly,
    parse_firefly,
    parse_line,
    syslog_header,
)

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
        "<134>1  flowd-go-host flowd-go - firefly-json - ",
        "<134>1 2024-03-28T08:58:48Z host app 1234 firefly-json - \ufeff",
        '<134>1 2024-03-28T08:58:48Z host app - firefly-json [origin ip="192.0.2.1"][x@1 a="b\\"]c"] ',
    ],
)
def test_firefly_syslog_header_forms(header: str) -> None:
    assert parse_firefly(header + ONGOING_V6) == SAMPLES["ongoing, bare, IPv6, +01:00"][1]




@pytest.mark.parametrize("application", ['xrdcp "quoted" 5.5', 'a", "b', 'x"}', 'say "hi"'])
def test_an_unescaped_quote_in_the_application_is_repaired(application: str) -> None:
    doc = json.loads(ONGOING_V6)
    doc["context"]["application"] = "APP"
    broken = json.dumps(doc).replace('"APP"', f'"{application}"')
    with pytest.raises(EventError, match="not valid JSON"):
        parse_firefly(broken)  # strict unless the caller takes repairs
    notes: list[str] = []
    event = parse_firefly("<134>1 - host xrootd - firefly-json - " + broken, on_repair=notes.append)
    assert event.application == application
    expected = SAMPLES["ongoing, bare, IPv6, +01:00"][1]
    assert event._replace(application=None) == expected._replace(application=None)
    assert len(notes) == 1 and "unescaped quote" in notes[0]


def test_a_repair_does_not_rescue_other_damage() -> None:
    doc = json.loads(ONGOING_V6)
    doc["context"]["application"] = 'x"y'
    broken = json.dumps(doc).replace('x\\"y', 'x"y').replace('"activity-id"', '"activity-id')
    notes: list[str] = []
    with pytest.raises(EventError, match="not valid JSON"):
        parse_firefly(broken, on_repair=notes.append)
    assert notes == []


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


@given(flow_events(with_times=True, min_port=1), st.booleans(), st.sampled_from([{}, {"usage": {"sent": 1}}]))
def test_ongoing_firefly_writes_what_format_firefly_writes(event: FlowEvent, syslog: bool,
                                                           extra: dict[str, Any]) -> None:
    event = event._replace(state="ongoing", end_time=None)
    current = times.format_time(NOW)
    members = json.dumps(extra, separators=(",", ":"))[1:-1]
    header = syslog_header(current) if syslog else ""
    assert OngoingFirefly(event).format(current, members, header) == format_firefly(event, syslog=syslog,
                                                                                    now=NOW, extra=extra)


def test_ongoing_firefly_refuses_what_format_firefly_refuses() -> None:
    expect_error("sport", lambda: OngoingFirefly(parse_line("ongoing tcp ::1 0 ::2 2 2 15")))




# -- the published schema ---------------------------------------------------------------------------


def test_lenient_loader() -> None:
    assert load_lenient_json('{"a": [1, 2,], "b": "x,}",\n}') == {"a": [1, 2], "b": "x,}"}


@pytest.mark.parametrize("name", SAMPLES)
def test_samples_follow_the_schema(schema_validator: Any, name: str) -> None:
    message = SAMPLES[name][0]
    schema_validator.validate(json.loads(json_part(message)))


@settings(max_examples=300, deadline=None)
@given(flow_events(with_times=True, min_port=1))
def test_written_fireflies_follow_the_schema(schema_validator: Any, event: FlowEvent) -> None:
    schema_validator.validate(json.loads(format_firefly(event)))
    schema_validator.validate(json.loads(format_firefly(event._replace(start_time=None, end_time=None))))
