"""Flow events as the senders write them, and helpers the event-format tests share."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from flowlabel.events import EventError, FlowEvent
from support.schemas import load_lenient_json  # noqa: F401  (the unit tests import it from here)

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
#: The event of the first pipe sample (and of the API sample, less its time and application).
SAMPLE_EVENT = FlowEvent("start", "tcp", ipaddress.ip_address("2001:db8::1"),
                         ipaddress.ip_address("2001:db8::2"), 2345, 5777, 2, 15)


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



def api(**changes: object) -> dict[str, object]:
    doc: dict[str, object] = {**API_SAMPLE, "experiment": 2, "activity": 15}
    for key, value in changes.items():
        if value is REMOVE:
            del doc[key]
        else:
            doc[key] = value
    return doc


REMOVE = object()
