"""FlowEvent: built from loose parts, checked, immutable."""

from __future__ import annotations

import ipaddress
import pickle
from datetime import datetime, timedelta
from typing import Any

import pytest
from event_samples import PIPE_SAMPLES, UTC, V6A, V6B, expect_error

from flowlabel.events import FlowEvent, parse_line
from flowlabel.flow import Flow

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
