"""flowd-go's flow object, as its HTTP API takes it (``POST /flow``) and answers it.

flowd-go decodes the body into its Go ``FlowID`` with ``encoding/json``: member
names are the Go field names, matched without regard to case, and the enums are
numbers:

=============== ===========================================================================
member          value
=============== ===========================================================================
``State``       2 start, 3 end, 4 ongoing (the words are accepted too)
``Protocol``    0 tcp, 1 udp (or the words)
``Family``      2 IPv4, 10 IPv6; optional, and must match the addresses when given
``Src``, ``Dst`` ``{"IP": "2001:db8::1", "Port": 2345}`` (flowd-go 2.0-2.3) or
                ``"[2001:db8::1]:2345"`` (flowd-go 2.4, a Go ``netip.AddrPort``)
``Experiment``  experiment ID 0-511 (the flow label carries no more)
``Activity``    activity ID 0-63
``StartTs``,    RFC 3339 date-times; Go's zero time ``0001-01-01T00:00:00Z`` means unset
``EndTs``
``Application`` string, optional
=============== ===========================================================================

Other members (``CurrentTs``, ``Info``, ``Enrichment`` ...) are ignored, as
flowd-go ignores what it does not know. :func:`format_flowd_go` writes an event
back in the same shape (2.0-2.3 addresses).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .. import times
from .._text import json_kind, show
from .event import (
    EventError,
    FlowEvent,
    activity_id,
    date_time,
    experiment_id,
    integer,
    integral,
    new_event,
    optional_str,
    parse_address,
    port_text,
    protocol_word,
    same_family,
    state_word,
)

__all__ = ["DUMMY", "format_flowd_go", "parse_flowd_go"]

_STATES = {2: "start", 3: "end", 4: "ongoing"}
_STATE_NUMBERS = {word: number for number, word in _STATES.items()}
_PROTOCOLS = {0: "tcp", 1: "udp"}
_PROTOCOL_NUMBERS = {word: number for number, word in _PROTOCOLS.items()}
_FAMILIES = {2: 4, 10: 6}
_GO_ZERO_TIME = "0001-01-01T00:00:00Z"

#: The flow of flowd-go's ``/dummy/start`` and ``/dummy/end``, with the largest IDs a label carries.
DUMMY = {"Protocol": 0, "Family": 10, "Src": "[::1]:2345", "Dst": "[::1]:5777",
         "Experiment": 511, "Activity": 63, "Application": "flowlabel dummy flow"}


def _enum(value: object, numbers: dict[int, str], word: Any, field: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        if value in numbers:
            return numbers[value]
        known = ", ".join(f"{n} ({w})" for n, w in numbers.items())
        raise EventError(field, f"must be one of {known}, got {value}")
    return str(word(value, field))


def _endpoint(value: object, field: str) -> tuple[Any, int]:
    if isinstance(value, Mapping):
        members = {str(k).lower(): v for k, v in value.items()}
        if "ip" not in members or "port" not in members:
            raise EventError(field, f"must have IP and Port, got {show(value)}")
        text = members["ip"]
        if not isinstance(text, str):
            raise EventError(f"{field}.IP", f"must be an address string, got {json_kind(text)}")
        port = integer(members["port"], f"{field}.Port", 0, 65535)
        return parse_address(text, f"{field}.IP"), port
    if isinstance(value, str):
        host, sep, written = value.rpartition(":")
        if not sep:
            raise EventError(field, f"must be \"ADDRESS:PORT\" or \"[IPV6]:PORT\", got {show(value)}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return parse_address(host, field), port_text(written, field)
    raise EventError(field, f"must be an object with IP and Port or an \"ADDRESS:PORT\" string, "
                            f"got {json_kind(value)}")


def _time(value: object, field: str) -> datetime | None:
    if value is None or value == "" or value == _GO_ZERO_TIME:
        return None
    return date_time(value, field)


def parse_flowd_go(document: object) -> FlowEvent:
    """A flow event from flowd-go's flow object (see the module docstring)."""
    if not isinstance(document, Mapping):
        raise EventError("flow", f"must be a JSON object, got {json_kind(document)}")
    members = {str(key).lower(): value for key, value in document.items()}

    def member(name: str) -> object:
        try:
            return members[name.lower()]
        except KeyError:
            raise EventError(name, "required member missing") from None

    state = _enum(member("State"), _STATES, state_word, "State")
    protocol = _enum(member("Protocol"), _PROTOCOLS, protocol_word, "Protocol")
    src, sport = _endpoint(member("Src"), "Src")
    dst, dport = _endpoint(member("Dst"), "Dst")
    same_family(src, dst, "Dst")
    family = members.get("family")
    if family is not None:
        family = integral(family)
        if type(family) is not int or family not in _FAMILIES:  # a list or object is not hashable
            raise EventError("Family", f"must be 2 (IPv4) or 10 (IPv6), got {show(family)}")
        if _FAMILIES[family] != src.version:
            raise EventError("Family", f"is {family} but the addresses are IPv{src.version}")
    experiment = experiment_id(member("Experiment"), "Experiment")
    activity = activity_id(member("Activity"), "Activity")
    start_time = _time(members.get("startts"), "StartTs")
    end_time = _time(members.get("endts"), "EndTs")
    application = optional_str(members.get("application"), "Application") or None
    return new_event(
        (state, protocol, src, dst, sport, dport, experiment, activity, start_time, end_time, application)
    )


def format_flowd_go(event: FlowEvent) -> dict[str, Any]:
    """``event`` as flowd-go's flow object, as its API echoes a flow back."""
    def when(value: datetime | None) -> str:
        return times.format_time(value) if value is not None else _GO_ZERO_TIME

    return {
        "State": _STATE_NUMBERS[event.state],
        "Protocol": _PROTOCOL_NUMBERS[event.protocol],
        "Family": 10 if event.src.version == 6 else 2,
        "Src": {"IP": str(event.src), "Port": event.sport},
        "Dst": {"IP": str(event.dst), "Port": event.dport},
        "Experiment": event.experiment,
        "Activity": event.activity,
        "StartTs": when(event.start_time),
        "EndTs": when(event.end_time),
        "Application": event.application or "",
    }
