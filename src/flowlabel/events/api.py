"""The HTTP API's event object.

A JSON object with these members:

=============== ============ ===========================================================
member          required     value
=============== ============ ===========================================================
``state``       yes          ``"start"``, ``"ongoing"`` or ``"end"``
``protocol``    yes          ``"tcp"`` or ``"udp"``
``src_ip``      yes          IPv4 or IPv6 address, same family as ``dst_ip``
``src_port``    yes          integer 0-65535
``dst_ip``      yes          IPv4 or IPv6 address
``dst_port``    yes          integer 0-65535
``experiment``  yes          experiment ID 0-511, or its registry name
``activity``    yes          activity ID 0-63, or its registry name
``start_time``  no           RFC 3339 / ISO 8601 date-time with a UTC offset, or null
``end_time``    no           RFC 3339 / ISO 8601 date-time with a UTC offset, or null
``application`` no           string (name and version of the sending application), or null
=============== ============ ===========================================================

For example::

    {"state": "start", "protocol": "tcp",
     "src_ip": "2001:db8::1", "src_port": 2345, "dst_ip": "2001:db8::2", "dst_port": 5777,
     "experiment": "atlas", "activity": "Production Input",
     "start_time": "2024-03-28T08:58:48.899646Z", "application": "xrootd 5.6.9"}

A string of decimal digits counts as the ID it spells. Names are accepted only
when the server has a registry; they match case-insensitively and with ``-``,
``_`` and spaces alike. Unknown members are rejected, naming the member.
:func:`format_api` writes all members, with IDs as integers, times in UTC and
null for absent optional values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .. import times
from .._text import json_kind
from ..registry import Registry
from .event import (
    FIELDS,
    Data,
    EventError,
    FlowEvent,
    address,
    decode_text,
    integer,
    integral,
    new_event,
    optional_str,
    optional_time,
    protocol_word,
    resolve_ids,
    same_family,
    state_word,
)

__all__ = ["format_api", "parse_api"]


_API_OPTIONAL = ("start_time", "end_time", "application")
_API_KEYS = frozenset(FIELDS + _API_OPTIONAL)


def parse_api(obj: Mapping[str, Any] | Data, registry: Registry | None = None) -> FlowEvent:
    """Parse an HTTP API event object (see the module docstring), given parsed or as JSON text.

    ``experiment`` and ``activity`` may be registry names when ``registry`` is given.
    """
    if isinstance(obj, (str, bytes, bytearray, memoryview)):
        text = decode_text(obj, "event")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EventError("event", f"not valid JSON: {exc.msg} at character {exc.pos}") from None
        except (ValueError, RecursionError) as exc:
            raise EventError("event", f"not valid JSON: {exc}") from None
    if not isinstance(obj, Mapping):
        raise EventError("event", f"must be a JSON object, got {json_kind(obj)}")
    for key in obj:
        if key not in _API_KEYS:
            raise EventError(
                str(key), f"unknown key {key!r}; the keys are {', '.join(FIELDS + _API_OPTIONAL)}"
            )
    missing: list[str] = [key for key in FIELDS if key not in obj]
    if missing:
        raise EventError(missing[0], "required key missing")
    # Checked in the order of the documented fields, so the first bad one is reported.
    state = state_word(obj["state"], "state")
    protocol = protocol_word(obj["protocol"], "protocol")
    src = address(obj["src_ip"], "src_ip")
    sport = integer(integral(obj["src_port"]), "src_port", 0, 65535)
    dst = address(obj["dst_ip"], "dst_ip")
    dport = integer(integral(obj["dst_port"]), "dst_port", 0, 65535)
    same_family(src, dst, "dst_ip")
    experiment, activity = resolve_ids(
        integral(obj["experiment"]), integral(obj["activity"]), registry, ("experiment", "activity")
    )
    return new_event(
        (
            state,
            protocol,
            src,
            dst,
            sport,
            dport,
            experiment,
            activity,
            optional_time(obj.get("start_time"), "start_time"),
            optional_time(obj.get("end_time"), "end_time"),
            optional_str(obj.get("application"), "application"),
        )
    )


def format_api(event: FlowEvent) -> dict[str, Any]:
    """The HTTP API object for ``event``: every member, times as UTC strings, null when absent."""
    return {
        "state": event.state,
        "protocol": event.protocol,
        "src_ip": str(event.src),
        "src_port": event.sport,
        "dst_ip": str(event.dst),
        "dst_port": event.dport,
        "experiment": event.experiment,
        "activity": event.activity,
        "start_time": None if event.start_time is None else times.format_time(event.start_time),
        "end_time": None if event.end_time is None else times.format_time(event.end_time),
        "application": event.application,
    }
