"""Flow events and the wire formats that carry them.

A :class:`FlowEvent` says that a transfer flow started, is ongoing or ended, and
which experiment and activity it belongs to. Three formats carry events; each
has a parser that raises :class:`EventError` (and nothing else) for bad input
and a writer.

Named-pipe line (flowd format)
------------------------------
One event per line, eight fields separated by any amount of white space::

    state protocol src_ip src_port dst_ip dst_port experiment activity
    start tcp 2001:db8::1 2345 2001:db8::2 5777 2 15

``state`` is ``start``, ``ongoing`` or ``end`` and ``protocol`` is ``tcp`` or
``udp``, in any case. Ports and IDs are decimal digits. When a
:class:`~flowlabel.registry.Registry` is given, ``experiment`` and ``activity``
may also be registry names (write spaces as ``-`` or ``_``, e.g.
``atlas Production-Input``). See :func:`parse_line` and :func:`format_line`.

Firefly (SciTags firefly message, version 1)
---------------------------------------------
The JSON object of the published firefly schema, bare or behind an RFC 5424
syslog header such as
``<134>1 2024-03-28T08:58:48.899646+00:00 host xrootd - firefly-json - {...}``
(any structured data and a byte order mark before the JSON are skipped).
Members the schema requires must be present and well typed; ``afi`` must match
the addresses, ports must be 1-65535 and an ``end`` message needs
``end-time``. Experiment and activity IDs must also fit the flow label (0-511,
0-63), which the schema does not demand. Errors name the member by its JSON
path, e.g. ``flow-lifecycle.state``.

Parsing is lenient where that loses nothing: members this package does not use
(``usage``, ``netlink``, unknown ones at any level) are ignored, ``current-time``
only has to be a string, the words of ``state``, ``afi`` and ``protocol`` may
be in any case, and trailing white space or NUL bytes are dropped. See
:func:`parse_firefly` and :func:`format_firefly`.

HTTP API event object
---------------------
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

Times
-----
Parsers return times as timezone-aware :class:`~datetime.datetime` objects in
UTC; writers give UTC with microseconds and ``Z``. What is read, and the one
written form, are :mod:`flowlabel.times`.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from collections.abc import Mapping
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address
from socket import AF_INET, AF_INET6
from typing import Any, Callable, NamedTuple, Union

from . import times
from ._text import json_kind, show
from .flow import Flow, IPAddress
from .label import ACTIVITY_MAX, EXPERIMENT_MAX, LabelError, check_activity, check_experiment
from .registry import Registry, RegistryError, as_id

__all__ = [
    "PROTOCOLS",
    "STATES",
    "Data",
    "EventError",
    "FlowEvent",
    "format_api",
    "format_firefly",
    "format_line",
    "parse_api",
    "parse_firefly",
    "parse_line",
]

STATES = ("start", "ongoing", "end")
PROTOCOLS = ("tcp", "udp")

#: What the parsers take as raw input: text, or UTF-8 encoded bytes.
Data = Union[str, bytes, bytearray, memoryview]

_IP_TYPES = (IPv4Address, IPv6Address)


class EventError(ValueError):
    """An event, or a message carrying one, is invalid.

    ``field`` names the offending field (a pipe/API field name, or a JSON path
    such as ``"flow-id.src-port"`` for fireflies; ``"line"``, ``"message"``,
    ``"syslog"`` or ``"event"`` for the input as a whole) and ``reason`` says
    what is wrong with it.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field = field
        self.reason = reason

    def __str__(self) -> str:
        return f"field {self.field!r}: {self.reason}"


class FlowEvent(NamedTuple):
    """One flow event: what happened to which flow, for which experiment and activity.

    Constructing a ``FlowEvent`` directly does not check anything; use
    :meth:`of` for values from outside, or :meth:`validate`. The parsers in
    this module only return valid events.
    """

    state: str
    protocol: str
    src: IPAddress
    dst: IPAddress
    sport: int
    dport: int
    experiment: int
    activity: int
    start_time: datetime | None = None
    end_time: datetime | None = None
    application: str | None = None

    @property
    def flow(self) -> Flow:
        """The flow's 5-tuple."""
        return Flow(self.protocol, self.src, self.dst, self.sport, self.dport)

    @classmethod
    def of(
        cls,
        state: str,
        protocol: str,
        src: str | IPAddress,
        dst: str | IPAddress,
        sport: int,
        dport: int,
        experiment: int,
        activity: int,
        start_time: datetime | str | None = None,
        end_time: datetime | str | None = None,
        application: str | None = None,
    ) -> FlowEvent:
        """Build an event from loosely typed parts, checking each one.

        Addresses may be strings, times ISO 8601 strings; states and protocols
        are case-insensitive. Times are converted to UTC. Raises
        :class:`EventError` naming the parameter at fault.
        """
        src_ip = _address(src, "src")
        dst_ip = _address(dst, "dst")
        _same_family(src_ip, dst_ip, "dst")
        return cls(
            _choice(state, STATES, "state"),
            _choice(protocol, PROTOCOLS, "protocol"),
            src_ip,
            dst_ip,
            _int(sport, "sport", 0, 65535),
            _int(dport, "dport", 0, 65535),
            _experiment(experiment, "experiment"),
            _activity(activity, "activity"),
            _optional_time(start_time, "start_time"),
            _optional_time(end_time, "end_time"),
            _optional_str(application, "application"),
        )

    def validate(self) -> FlowEvent:
        """Check every field; return the event with times in UTC, or raise :class:`EventError`."""
        return FlowEvent.of(*self)


# -- shared field checks ---------------------------------------------------------------------


def _choice(value: object, choices: tuple[str, ...], field: str) -> str:
    if isinstance(value, str):
        if value in choices:
            return value
        lowered = value.lower()
        if lowered in choices:
            return lowered
    raise EventError(field, f"must be one of {', '.join(choices)}, got {show(value)}")


def _int(value: object, field: str, low: int, high: int) -> int:
    if type(value) is int:
        if low <= value <= high:
            return value
    elif isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return int(value)
    raise EventError(field, f"must be an integer {low}-{high}, got {show(value)}")


def _integral(value: object) -> object:
    """JSON Schema counts 5.0 as an integer, so JSON parsers accept integral floats."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


def _checked(check: Callable[[object], int], value: object, field: str, high: int) -> int:
    try:
        return check(value)
    except LabelError:
        raise EventError(field, f"must be an integer 0-{high}, got {show(value)}") from None


def _experiment(value: object, field: str) -> int:
    return _checked(check_experiment, value, field, EXPERIMENT_MAX)


def _activity(value: object, field: str) -> int:
    return _checked(check_activity, value, field, ACTIVITY_MAX)


# Parsed addresses, keyed by their text. A flow's endpoints repeat across its
# events, and ipaddress parsing dominates the cost of a pipe line otherwise.
_ADDRESSES: dict[str, IPAddress] = {}
_ADDRESS_CACHE_SIZE = 8192


def _no_inet_pton(family: int, text: str) -> bytes:
    raise OSError("socket.inet_pton is not available here")


_inet_pton: Callable[[int, str], bytes] = getattr(socket, "inet_pton", _no_inet_pton)


def _parse_address(text: str, field: str) -> IPAddress:
    address = _ADDRESSES.get(text)
    if address is not None:
        return address
    # inet_pton is about five times faster than ipaddress's own parser; what it
    # rejects still gets ipaddress's verdict, so no valid address is lost.
    # Zone indices ("fe80::1%eth0") are refused: they make equal addresses unequal.
    try:
        if ":" in text:
            address = IPv6Address(_inet_pton(AF_INET6, text))
        else:
            address = IPv4Address(_inet_pton(AF_INET, text))
    except (OSError, ValueError):
        address = _ip_address(text) if "%" not in text else None
    if address is None:
        raise EventError(field, f"must be an IPv4 or IPv6 address, got {show(text)}")
    if len(_ADDRESSES) >= _ADDRESS_CACHE_SIZE:
        _ADDRESSES.clear()
    _ADDRESSES[text] = address
    return address


def _ip_address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _address(value: object, field: str) -> IPAddress:
    if isinstance(value, str):
        return _parse_address(value, field)
    if isinstance(value, _IP_TYPES):
        return value
    raise EventError(field, f"must be an IP address string, got {json_kind(value)} {show(value)}")


def _same_family(src: IPAddress, dst: IPAddress, field: str) -> None:
    if src.version != dst.version:
        raise EventError(field, f"must be IPv{src.version} like the source address {src}, got {dst}")


def _optional_str(value: object, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise EventError(field, f"must be a string, got {json_kind(value)} {show(value)}")


def _time(value: object, field: str) -> datetime:
    try:
        if isinstance(value, str):
            return times.parse(value)
        if isinstance(value, datetime):
            return times.in_utc(value)
    except times.TimeError as exc:
        raise EventError(field, str(exc)) from None
    raise EventError(field, f"must be a date-time string, got {json_kind(value)} {show(value)}")


def _optional_time(value: object, field: str) -> datetime | None:
    return None if value is None else _time(value, field)


def _resolve(
    experiment: object, activity: object, registry: Registry | None, fields: tuple[str, str]
) -> tuple[int, int]:
    """Experiment and activity IDs from IDs, decimal strings or (with a registry) names."""
    ids = []
    for value, field, check, high in ((experiment, fields[0], check_experiment, EXPERIMENT_MAX),
                                      (activity, fields[1], check_activity, ACTIVITY_MAX)):
        try:
            ident = as_id(value, check, field)
        except RegistryError:
            raise EventError(field, f"must be an integer 0-{high} or a name, got {show(value)}") from None
        if ident is None and registry is None:
            raise EventError(field, f"must be an integer 0-{high} (names need a registry), got {show(value)}")
        ids.append(ident)
    if ids[0] is not None and ids[1] is not None:
        return ids[0], ids[1]
    assert registry is not None
    # A value that is not an ID is a string: as_id gave None for a name.
    names: list[str | int] = [str(v) if i is None else i for v, i in zip((experiment, activity), ids)]
    try:
        return registry.resolve(*names)
    except RegistryError as exc:
        raise EventError(fields[1] if exc.part == "activity" else fields[0], str(exc)) from None


# -- named-pipe lines ------------------------------------------------------------------------

_PIPE_FIELDS = ("state", "protocol", "src_ip", "src_port", "dst_ip", "dst_port", "experiment", "activity")
_STATE_WORDS = {s: s for s in STATES}
_PROTOCOL_WORDS = {p: p for p in PROTOCOLS}


def _decode(data: object, field: str) -> str:
    if isinstance(data, str):
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EventError(field, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    raise EventError(field, f"must be str or bytes, got {type(data).__name__}")


def _pipe_port(text: str, field: str) -> int:
    if len(text) <= 5 and text.isdigit() and text.isascii():
        value = int(text)
        if value <= 65535:
            return value
    raise EventError(field, f"must be an integer 0-65535, got {show(text)}")


def parse_line(line: Data, registry: Registry | None = None) -> FlowEvent:
    """Parse one named-pipe line (see the module docstring).

    ``experiment`` and ``activity`` may be registry names if ``registry`` is
    given. The returned event has no times and no application.
    """
    text = line if type(line) is str else _decode(line, "line")
    parts = text.split()
    if len(parts) != 8:
        raise EventError(
            "line", f"expected 8 fields ({' '.join(_PIPE_FIELDS)}), got {len(parts)}: {show(text)}"
        )
    state, protocol, src_text, sport_text, dst_text, dport_text, exp_text, act_text = parts
    state = _STATE_WORDS.get(state) or _choice(state, STATES, "state")
    protocol = _PROTOCOL_WORDS.get(protocol) or _choice(protocol, PROTOCOLS, "protocol")
    src = _ADDRESSES.get(src_text) or _parse_address(src_text, "src_ip")
    sport = _pipe_port(sport_text, "src_port")
    dst = _ADDRESSES.get(dst_text) or _parse_address(dst_text, "dst_ip")
    dport = _pipe_port(dport_text, "dst_port")
    if src.version != dst.version:
        _same_family(src, dst, "dst_ip")
    # The common case, two short decimal IDs in range, skips the general resolver.
    if (
        len(exp_text) <= 3
        and len(act_text) <= 2
        and exp_text.isdigit()
        and act_text.isdigit()
        and exp_text.isascii()
        and act_text.isascii()
    ):
        experiment = int(exp_text)
        activity = int(act_text)
        if experiment > EXPERIMENT_MAX or activity > ACTIVITY_MAX:
            experiment, activity = _resolve(exp_text, act_text, registry, ("experiment", "activity"))
    else:
        experiment, activity = _resolve(exp_text, act_text, registry, ("experiment", "activity"))
    return _new_event((state, protocol, src, dst, sport, dport, experiment, activity, None, None, None))


# tuple.__new__ skips the generated keyword-handling __new__; the parsers have
# already checked every field.
def _new_event(fields: tuple[Any, ...]) -> FlowEvent:
    return tuple.__new__(FlowEvent, fields)


def format_line(event: FlowEvent) -> str:
    """The named-pipe line for ``event`` (times and application are not part of it)."""
    return (
        f"{event.state} {event.protocol} {event.src} {event.sport} "
        f"{event.dst} {event.dport} {event.experiment} {event.activity}"
    )


# -- fireflies -------------------------------------------------------------------------------

_SYSLOG_PREFIX = re.compile(r"<\d{1,3}>\d{1,2}\Z", re.ASCII)
_HEADER_TOKEN = re.compile(r"[!-~]+\Z", re.ASCII)  # RFC 5424 PRINTUSASCII
_AFI_VERSION = {"ipv4": 4, "ipv6": 6}
_JSON_DECODE = json.JSONDecoder().decode


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
    if len(parts) < 7 or not _SYSLOG_PREFIX.match(parts[0]) or not all(parts[1:6]):
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


def parse_firefly(data: Data) -> FlowEvent:
    """Parse a firefly message, bare JSON or behind an RFC 5424 syslog header.

    The event's ``start_time`` is always set; ``end_time`` is set when the
    message has one (always for ``end`` messages).
    """
    text = data if type(data) is str else _decode(data, "message")
    if text.startswith("<"):
        text = _syslog_payload(text)
    if text.endswith("\x00"):
        # Some C senders count the string terminator into the datagram.
        text = text.rstrip("\x00")
    try:
        doc = _JSON_DECODE(text)
    except json.JSONDecodeError as exc:
        raise EventError("message", f"not valid JSON: {exc.msg} at character {exc.pos}") from None
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
    if type(state) is not str or state not in _STATE_WORDS:
        state = _choice(state, STATES, "flow-lifecycle.state")
    start_time = _time(
        _string(_member(life, "start-time", "flow-lifecycle"), "flow-lifecycle.start-time"),
        "flow-lifecycle.start-time",
    )
    end_time: datetime | None = None
    if "end-time" in life:
        path = "flow-lifecycle.end-time"
        end_time = _time(_string(life["end-time"], path), path)
    elif state == "end":
        raise EventError("flow-lifecycle.end-time", "required member missing (state is 'end')")
    if "current-time" in life:
        _string(life["current-time"], "flow-lifecycle.current-time")

    fid = _object(_member(doc, "flow-id", ""), "flow-id")
    afi = _member(fid, "afi", "flow-id")
    version_wanted = _AFI_VERSION.get(afi) if type(afi) is str else None
    if version_wanted is None:
        afi = _choice(afi, ("ipv4", "ipv6"), "flow-id.afi")
        version_wanted = _AFI_VERSION[afi]
    src = _address_in(_member(fid, "src-ip", "flow-id"), "flow-id.src-ip", version_wanted)
    dst = _address_in(_member(fid, "dst-ip", "flow-id"), "flow-id.dst-ip", version_wanted)
    protocol = _member(fid, "protocol", "flow-id")
    if type(protocol) is not str or protocol not in _PROTOCOL_WORDS:
        protocol = _choice(protocol, PROTOCOLS, "flow-id.protocol")
    sport = _int(_integral(_member(fid, "src-port", "flow-id")), "flow-id.src-port", 1, 65535)
    dport = _int(_integral(_member(fid, "dst-port", "flow-id")), "flow-id.dst-port", 1, 65535)

    ctx = _object(_member(doc, "context", ""), "context")
    experiment = _experiment(_integral(_member(ctx, "experiment-id", "context")), "context.experiment-id")
    activity = _activity(_integral(_member(ctx, "activity-id", "context")), "context.activity-id")
    application = None
    if "application" in ctx:
        application = _string(ctx["application"], "context.application")
    return _new_event(
        (state, protocol, src, dst, sport, dport, experiment, activity, start_time, end_time, application)
    )


def _address_in(value: object, path: str, version: int) -> IPAddress:
    address = _parse_address(_string(value, path), path)
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
) -> bytes:
    """Write ``event`` as a firefly message (UTF-8 JSON), optionally behind a syslog header.

    ``now`` (default: the current time) is written as ``current-time`` and is
    used for the syslog timestamp. The schema requires ``start-time``, and
    ``end-time`` for ``end`` messages; when the event lacks them, ``now`` stands
    in. The schema allows only ports 1-65535, so port 0 raises
    :class:`EventError`. ``hostname`` defaults to this host's name;
    ``hostname`` and ``appname`` must be valid RFC 5424 header fields
    (``ValueError`` otherwise).
    """
    event = event.validate()
    for field, port in (("sport", event.sport), ("dport", event.dport)):
        if port == 0:
            raise EventError(field, "a firefly needs ports 1-65535, got 0")
    when = _time(now, "now") if now is not None else times.now()
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
    context: dict[str, Any] = {"experiment-id": event.experiment, "activity-id": event.activity}
    if event.application is not None:
        context["application"] = event.application
    message = {
        "version": 1,
        "flow-lifecycle": lifecycle,
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
    payload = json.dumps(message, separators=(",", ":"))
    if not syslog:
        return payload.encode("ascii")
    host = _default_hostname() if hostname is None else _header_token(hostname, "hostname", 255)
    app = _header_token(appname, "appname", 48)
    # PRI 134 is facility local0, severity informational, as the other senders use.
    return f"<134>1 {current} {host} {app} - firefly-json - {payload}".encode("ascii")


# -- HTTP API objects ------------------------------------------------------------------------

_API_REQUIRED = ("state", "protocol", "src_ip", "src_port", "dst_ip", "dst_port", "experiment", "activity")
_API_OPTIONAL = ("start_time", "end_time", "application")
_API_KEYS = frozenset(_API_REQUIRED + _API_OPTIONAL)


def parse_api(obj: Mapping[str, Any] | Data, registry: Registry | None = None) -> FlowEvent:
    """Parse an HTTP API event object (see the module docstring), given parsed or as JSON text.

    ``experiment`` and ``activity`` may be registry names when ``registry`` is given.
    """
    if isinstance(obj, (str, bytes, bytearray, memoryview)):
        text = _decode(obj, "event")
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
                str(key), f"unknown key {key!r}; the keys are {', '.join(_API_REQUIRED + _API_OPTIONAL)}"
            )
    missing: list[str] = [key for key in _API_REQUIRED if key not in obj]
    if missing:
        raise EventError(missing[0], "required key missing")
    # Checked in the order of the documented fields, so the first bad one is reported.
    state = _choice(obj["state"], STATES, "state")
    protocol = _choice(obj["protocol"], PROTOCOLS, "protocol")
    src = _address(obj["src_ip"], "src_ip")
    sport = _int(_integral(obj["src_port"]), "src_port", 0, 65535)
    dst = _address(obj["dst_ip"], "dst_ip")
    dport = _int(_integral(obj["dst_port"]), "dst_port", 0, 65535)
    _same_family(src, dst, "dst_ip")
    experiment, activity = _resolve(
        _integral(obj["experiment"]), _integral(obj["activity"]), registry, ("experiment", "activity")
    )
    return _new_event(
        (
            state,
            protocol,
            src,
            dst,
            sport,
            dport,
            experiment,
            activity,
            _optional_time(obj.get("start_time"), "start_time"),
            _optional_time(obj.get("end_time"), "end_time"),
            _optional_str(obj.get("application"), "application"),
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
