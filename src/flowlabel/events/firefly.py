"""The firefly: the SciTags firefly message, version 1.

The JSON object of the published firefly schema, bare or behind an RFC 5424
syslog header such as
``<134>1 2024-03-28T08:58:48.899646+00:00 host xrootd - firefly-json - {...}``
(any structured data and a byte order mark before the JSON are skipped; the
timestamp may be the NILVALUE ``-`` or, as flowd-go 2.x writes it, empty).
Members the schema requires must be present and well typed; ``afi`` must match
the addresses, ports must be 1-65535 and an ``end`` message needs
``end-time``. Experiment and activity IDs must also fit the flow label (0-511,
0-63), which the schema does not demand. Errors name the member by its JSON
path, e.g. ``flow-lifecycle.state``.

Parsing is lenient where that loses nothing: members this package does not use
(``usage``, ``netlink``, unknown ones at any level) are ignored, ``current-time``
only has to be a string, the words of ``state``, ``afi`` and ``protocol`` may
be in any case, and trailing white space or NUL bytes are dropped. XRootD 5.5
writes the client's application name into ``context.application`` without
escaping it; a message that is invalid JSON only because of a ``"`` there is
repaired when the caller asks for it (``on_repair``). See :func:`parse_firefly`
and :func:`format_firefly`.
"""

from __future__ import annotations

import json
import re
import socket
from datetime import datetime
from typing import Any, Callable

from .. import times
from .._text import json_kind, show
from ..flow import IPAddress
from .event import (
    Data,
    EventError,
    FlowEvent,
    activity_id,
    choice,
    date_time,
    decode_text,
    experiment_id,
    integer,
    integral,
    new_event,
    parse_address,
    protocol_word,
    state_word,
)

__all__ = ["OngoingFirefly", "firefly_payload", "format_firefly", "parse_firefly", "repair_application",
           "syslog_header"]


_SYSLOG_PREFIX = re.compile(r"<\d{1,3}>\d{1,2}\Z", re.ASCII)
_HEADER_TOKEN = re.compile(r"[!-~]+\Z", re.ASCII)  # RFC 5424 PRINTUSASCII
_AFI_VERSION = {"ipv4": 4, "ipv6": 6}
_JSON_DECODE = json.JSONDecoder().decode
_APPLICATION_VALUE = re.compile(r'"application"\s*:\s*"')
#: Where the application name can end: a quote followed by the next member or the object's end.
_VALUE_END = re.compile(r'"(?=\s*[,}])')
#: Candidate ends tried before giving up; each costs one JSON decode.
_REPAIR_TRIES = 16


def _skip_structured_data(text: str) -> int:
    """Index just past the RFC 5424 STRUCTURED-DATA at the start of ``text``, or -1."""
    if text.startswith("-"):
        return 1
    i = 0
    n = len(text)
    while i < n and text[i] == "[":
        i += 1
        in_quotes = False
        while i < n:
            ch = text[i]
            if in_quotes:
                if ch == "\\":
                    i += 1
                elif ch == '"':
                    in_quotes = False
            elif ch == '"':
                in_quotes = True
            elif ch == "]":
                break
            i += 1
        if i >= n:
            return -1
        i += 1
    return i if i > 0 else -1


def _syslog_payload(text: str) -> str:
    """The MSG part of an RFC 5424 syslog message."""
    # HEADER = PRI VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID
    parts = text.split(" ", 6)
    # flowd-go 2.x leaves the TIMESTAMP of start and end fireflies empty instead of writing
    # the NILVALUE "-": an empty timestamp is read as "-", any other empty field is an error.
    if len(parts) < 7 or not _SYSLOG_PREFIX.match(parts[0]) or not all(parts[2:6]):
        raise EventError("syslog", f"not an RFC 5424 syslog header: {show(text[:80])}")
    rest = parts[6]
    end = _skip_structured_data(rest)
    if end < 0 or (end < len(rest) and rest[end] != " "):
        raise EventError("syslog", f"malformed structured data in syslog header: {show(rest[:80])}")
    payload = rest[end + 1 :]
    return payload[1:] if payload.startswith("\ufeff") else payload


def _member(obj: dict[str, Any], key: str, path: str) -> Any:
    try:
        return obj[key]
    except KeyError:
        raise EventError(f"{path}.{key}" if path else key, "required member missing") from None


def _object(value: object, path: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise EventError(path, f"must be an object, got {json_kind(value)}")
    return value


def _string(value: object, path: str) -> str:
    if type(value) is not str:
        raise EventError(path, f"must be a string, got {json_kind(value)} {show(value)}")
    return value


def firefly_payload(data: Data) -> str:
    """The JSON text of a firefly message: without its syslog header and trailing NULs."""
    text = data if type(data) is str else decode_text(data, "message")
    if text.startswith("<"):
        text = _syslog_payload(text)
    if text.endswith("\x00"):
        # Some C senders count the string terminator into the datagram.
        text = text.rstrip("\x00")
    return text


def repair_application(text: str) -> tuple[str, Any] | None:
    """``text`` with an unescaped ``context.application`` value escaped, and its decoded JSON.

    None when there is no application member or no end of its value makes the
    whole message valid JSON. The first end that does is taken: the members
    after the name are intact, so the shortest reading that parses is the
    sender's.
    """
    start = _APPLICATION_VALUE.search(text)
    if start is None:
        return None
    begin = start.end()
    for tries, end in enumerate(_VALUE_END.finditer(text, begin)):
        if tries >= _REPAIR_TRIES:
            break
        value = text[begin : end.start()]
        fixed = text[:begin] + json.dumps(value, ensure_ascii=False)[1:-1] + text[end.start() :]
        try:
            return fixed, _JSON_DECODE(fixed)
        except (ValueError, RecursionError):
            continue
    return None


def parse_firefly(data: Data, *, on_repair: Callable[[str], None] | None = None) -> FlowEvent:
    """Parse a firefly message, bare JSON or behind an RFC 5424 syslog header.

    The event's ``start_time`` is always set; ``end_time`` is set when the
    message has one (always for ``end`` messages). With ``on_repair``, a message
    that is invalid JSON only because its application name holds an unescaped
    ``"`` is repaired (:func:`repair_application`) and ``on_repair`` is called
    with what was wrong.
    """
    text = firefly_payload(data)
    try:
        doc = _JSON_DECODE(text)
    except json.JSONDecodeError as exc:
        repaired = repair_application(text) if on_repair is not None else None
        if repaired is None or on_repair is None:
            raise EventError("message", f"not valid JSON: {exc.msg} at character {exc.pos}") from None
        doc = repaired[1]
        on_repair(f"context.application held an unescaped quote (JSON error at character {exc.pos})")
    except (ValueError, RecursionError) as exc:
        # Integers too long to convert, or nesting too deep for the decoder.
        raise EventError("message", f"not valid JSON: {exc}") from None
    if type(doc) is not dict:
        raise EventError("message", f"must be a JSON object, got {json_kind(doc)}")

    version = _member(doc, "version", "")
    if version != 1 or type(version) is bool:
        raise EventError("version", f"unsupported firefly version {show(version)}, expected 1")

    life = _object(_member(doc, "flow-lifecycle", ""), "flow-lifecycle")
    state = _member(life, "state", "flow-lifecycle")
    state = state_word(state, "flow-lifecycle.state")
    start_time = date_time(
        _string(_member(life, "start-time", "flow-lifecycle"), "flow-lifecycle.start-time"),
        "flow-lifecycle.start-time",
    )
    end_time: datetime | None = None
    if "end-time" in life:
        path = "flow-lifecycle.end-time"
        end_time = date_time(_string(life["end-time"], path), path)
    elif state == "end":
        raise EventError("flow-lifecycle.end-time", "required member missing (state is 'end')")
    if "current-time" in life:
        _string(life["current-time"], "flow-lifecycle.current-time")

    fid = _object(_member(doc, "flow-id", ""), "flow-id")
    afi = _member(fid, "afi", "flow-id")
    version_wanted = _AFI_VERSION.get(afi) if type(afi) is str else None
    if version_wanted is None:
        afi = choice(afi, ("ipv4", "ipv6"), "flow-id.afi")
        version_wanted = _AFI_VERSION[afi]
    src = _address_in(_member(fid, "src-ip", "flow-id"), "flow-id.src-ip", version_wanted)
    dst = _address_in(_member(fid, "dst-ip", "flow-id"), "flow-id.dst-ip", version_wanted)
    protocol = _member(fid, "protocol", "flow-id")
    protocol = protocol_word(protocol, "flow-id.protocol")
    sport = integer(integral(_member(fid, "src-port", "flow-id")), "flow-id.src-port", 1, 65535)
    dport = integer(integral(_member(fid, "dst-port", "flow-id")), "flow-id.dst-port", 1, 65535)

    ctx = _object(_member(doc, "context", ""), "context")
    experiment = experiment_id(integral(_member(ctx, "experiment-id", "context")), "context.experiment-id")
    activity = activity_id(integral(_member(ctx, "activity-id", "context")), "context.activity-id")
    application = None
    if "application" in ctx:
        application = _string(ctx["application"], "context.application")
    return new_event(
        (state, protocol, src, dst, sport, dport, experiment, activity, start_time, end_time, application)
    )


def _address_in(value: object, path: str, version: int) -> IPAddress:
    address = parse_address(_string(value, path), path)
    if address.version != version:
        raise EventError(path, f"must be an IPv{version} address (afi is 'ipv{version}'), got {show(value)}")
    return address


_HOSTNAME: str | None = None


def _default_hostname() -> str:
    global _HOSTNAME
    if _HOSTNAME is None:
        name = socket.gethostname()
        _HOSTNAME = name if _HEADER_TOKEN.match(name) and len(name) <= 255 else "-"
    return _HOSTNAME


def _header_token(value: str, what: str, limit: int) -> str:
    if not _HEADER_TOKEN.match(value) or len(value) > limit:
        raise ValueError(
            f"syslog {what} must be 1-{limit} printable ASCII characters without spaces, got {value!r}"
        )
    return value


def format_firefly(
    event: FlowEvent,
    *,
    syslog: bool = False,
    hostname: str | None = None,
    appname: str = "flowlabel",
    now: datetime | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """Write ``event`` as a firefly message (UTF-8 JSON), optionally behind a syslog header.

    ``extra`` adds top-level members (``usage``, ``netlink``).

    ``now`` (default: the current time) is written as ``current-time`` and is
    used for the syslog timestamp. The schema requires ``start-time``, and
    ``end-time`` for ``end`` messages; when the event lacks them, ``now`` stands
    in. The schema allows only ports 1-65535, so port 0 raises
    :class:`EventError`. ``hostname`` defaults to this host's name;
    ``hostname`` and ``appname`` must be valid RFC 5424 header fields
    (``ValueError`` otherwise).
    """
    event = _writable(event)
    when = date_time(now, "now") if now is not None else times.now()
    current = times.format_time(when)
    lifecycle: dict[str, Any] = {
        "state": event.state,
        "start-time": times.format_time(event.start_time) if event.start_time is not None else current,
    }
    if event.end_time is not None:
        lifecycle["end-time"] = times.format_time(event.end_time)
    elif event.state == "end":
        lifecycle["end-time"] = current
    lifecycle["current-time"] = current
    message = {"version": 1, "flow-lifecycle": lifecycle, **_identity(event)}
    if extra:
        message.update(extra)
    payload = json.dumps(message, separators=_COMPACT)
    header = syslog_header(current, hostname, appname) if syslog else ""
    return f"{header}{payload}".encode("ascii")


def syslog_header(current: str, hostname: str | None = None, appname: str = "flowlabel") -> str:
    """The RFC 5424 header written before a firefly's JSON at time ``current`` (written form)."""
    host = _default_hostname() if hostname is None else _header_token(hostname, "hostname", 255)
    app = _header_token(appname, "appname", 48)
    # PRI 134 is facility local0, severity informational, as the other senders use.
    return f"<134>1 {current} {host} {app} - firefly-json - "


class OngoingFirefly:
    """A flow's ``ongoing`` firefly, written once but for its current time and added members.

    Ongoing fireflies are sent for every flow each period; this writes the same
    bytes as :func:`format_firefly` (``format(current, members, header)`` for
    ``format_firefly(event, now=..., extra=...)``) without building and encoding
    the whole message again. ``event`` must be valid for :func:`format_firefly`
    (:class:`EventError` otherwise); its state and end time are not used.
    """

    __slots__ = ("_identity", "_start")

    def __init__(self, event: FlowEvent) -> None:
        event = _writable(event)
        self._start = times.format_time(event.start_time) if event.start_time is not None else None
        self._identity = json.dumps(_identity(event), separators=_COMPACT)[1:-1]

    def format(self, current: str, members: str, header: str = "") -> bytes:
        """The firefly at ``current`` (written form) with ``members``, JSON member text (may be empty)."""
        return self._text(header, current, f",{members}" if members else "").encode("ascii")

    def template(self, header: str, current: str, members: str) -> str:
        """The firefly with the marks ``header``, ``current`` and ``members`` where the syslog
        header, the current time and the members go (csrc/ongoing.h's marks, which JSON text
        never holds unescaped)."""
        return self._text(header, current, f",{members}")

    def _text(self, header: str, current: str, extra: str) -> str:
        start = self._start or current
        return (f'{header}{{"version":1,"flow-lifecycle":{{"state":"ongoing","start-time":"{start}",'
                f'"current-time":"{current}"}},{self._identity}{extra}}}')


_COMPACT = (",", ":")


def _writable(event: FlowEvent) -> FlowEvent:
    """``event`` validated, with the ports the firefly schema allows."""
    event = event.validate()
    for field, port in (("sport", event.sport), ("dport", event.dport)):
        if port == 0:
            raise EventError(field, "a firefly needs ports 1-65535, got 0")
    return event


def _identity(event: FlowEvent) -> dict[str, Any]:
    """The ``flow-id`` and ``context`` members: what stays the same in every firefly of a flow."""
    context: dict[str, Any] = {"experiment-id": event.experiment, "activity-id": event.activity}
    if event.application is not None:
        context["application"] = event.application
    return {
        "flow-id": {
            "afi": f"ipv{event.src.version}",
            "src-ip": str(event.src),
            "dst-ip": str(event.dst),
            "protocol": event.protocol,
            "src-port": event.sport,
            "dst-port": event.dport,
        },
        "context": context,
    }
