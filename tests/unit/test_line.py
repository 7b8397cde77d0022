"""The named-pipe line: parsed as flowd's senders write it, written back."""

from __future__ import annotations

import ipaddress

import pytest
from event_samples import PIPE_SAMPLES, SAMPLE_EVENT, expect_error, flow_events
from hypothesis import given
from hypothesis import strategies as st

from flowlabel.events import FlowEvent, format_line, parse_line
from flowlabel.registry import Registry

# -- pipe lines ------------------------------------------------------------------------------------


def test_parse_line_sample() -> None:
    assert parse_line(PIPE_SAMPLES[0]) == SAMPLE_EVENT


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
