"""Flow events, and the checks of their fields that every wire format shares.

A :class:`FlowEvent` says that a transfer flow started, is ongoing or ended, and
which experiment and activity it belongs to. The formats that carry events
(:mod:`.line`, :mod:`.firefly`, :mod:`.api`) each have a parser that raises
:class:`EventError`, and nothing else, for bad input, and a writer. Times are
read and written as :mod:`flowlabel.times` says.
"""

from __future__ import annotations

import ipaddress
import socket
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address
from socket import AF_INET, AF_INET6
from typing import Any, Callable, NamedTuple, Union

from .. import times
from .._text import json_kind, show
from ..flow import PROTOCOLS, Flow, IPAddress, PackedIPv6Address
from ..label import ACTIVITY_MAX, EXPERIMENT_MAX, LabelError, check_activity, check_experiment
from ..registry import Registry, RegistryError, as_id

__all__ = ["FIELDS", "PROTOCOLS", "STATES", "Data", "EventError", "FlowEvent"]

STATES = ("start", "ongoing", "end")
#: The fields of an event, in the order the named-pipe line has them; all required in an API object.
FIELDS = ("state", "protocol", "src_ip", "src_port", "dst_ip", "dst_port", "experiment", "activity")
#: Each state and protocol keyed by itself: a dict lookup settles the usual, lower-case spelling.
STATE_WORDS = {s: s for s in STATES}
PROTOCOL_WORDS = {p: p for p in PROTOCOLS}

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
        src_ip = address(src, "src")
        dst_ip = address(dst, "dst")
        same_family(src_ip, dst_ip, "dst")
        return cls(
            state_word(state, "state"),
            protocol_word(protocol, "protocol"),
            src_ip,
            dst_ip,
            integer(sport, "sport", 0, 65535),
            integer(dport, "dport", 0, 65535),
            experiment_id(experiment, "experiment"),
            activity_id(activity, "activity"),
            optional_time(start_time, "start_time"),
            optional_time(end_time, "end_time"),
            optional_str(application, "application"),
        )

    def validate(self) -> FlowEvent:
        """Check every field; return the event with times in UTC, or raise :class:`EventError`."""
        return FlowEvent.of(*self)


# -- shared field checks ---------------------------------------------------------------------


def state_word(value: object, field: str) -> str:
    """``value`` as one of STATES (any case)."""
    return (type(value) is str and STATE_WORDS.get(value)) or choice(value, STATES, field)


def protocol_word(value: object, field: str) -> str:
    """``value`` as one of PROTOCOLS (any case)."""
    return (type(value) is str and PROTOCOL_WORDS.get(value)) or choice(value, PROTOCOLS, field)


def choice(value: object, choices: tuple[str, ...], field: str) -> str:
    if isinstance(value, str):
        if value in choices:
            return value
        lowered = value.lower()
        if lowered in choices:
            return lowered
    raise EventError(field, f"must be one of {', '.join(choices)}, got {show(value)}")


def integer(value: object, field: str, low: int, high: int) -> int:
    if type(value) is int:
        if low <= value <= high:
            return value
    elif isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return int(value)
    raise EventError(field, f"must be an integer {low}-{high}, got {show(value)}")


def port_text(text: str, field: str) -> int:
    """A port written as text: ASCII digits only (``isdigit()`` alone lets through digits
    ``int()`` refuses, such as "\u00b2", and numbers of any length), 0-65535."""
    if len(text) <= 5 and text.isdigit() and text.isascii():
        value = int(text)
        if value <= 65535:
            return value
    raise EventError(field, f"must be an integer 0-65535, got {show(text)}")


def integral(value: object) -> object:
    """JSON Schema counts 5.0 as an integer, so JSON parsers accept integral floats."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


def _checked(check: Callable[[object], int], value: object, field: str, high: int) -> int:
    try:
        return check(value)
    except LabelError:
        raise EventError(field, f"must be an integer 0-{high}, got {show(value)}") from None


def experiment_id(value: object, field: str) -> int:
    return _checked(check_experiment, value, field, EXPERIMENT_MAX)


def activity_id(value: object, field: str) -> int:
    return _checked(check_activity, value, field, ACTIVITY_MAX)


# Parsed addresses, keyed by their text. A flow's endpoints repeat across its
# events, and ipaddress parsing dominates the cost of a pipe line otherwise.
ADDRESSES: dict[str, IPAddress] = {}
_ADDRESS_CACHE_SIZE = 8192


def _no_inet_pton(family: int, text: str) -> bytes:
    raise OSError("socket.inet_pton is not available here")


_inet_pton: Callable[[int, str], bytes] = getattr(socket, "inet_pton", _no_inet_pton)


def parse_address(text: str, field: str) -> IPAddress:
    address = ADDRESSES.get(text)
    if address is not None:
        return address
    # inet_pton is about five times faster than ipaddress's own parser; what it
    # rejects still gets ipaddress's verdict, so no valid address is lost.
    # Zone indices ("fe80::1%eth0") are refused: they make equal addresses unequal.
    try:
        if ":" in text:
            address = PackedIPv6Address(_inet_pton(AF_INET6, text))
        else:
            address = IPv4Address(_inet_pton(AF_INET, text))
    except (OSError, ValueError):
        address = _ip_address(text) if "%" not in text else None
    if address is None:
        raise EventError(field, f"must be an IPv4 or IPv6 address, got {show(text)}")
    if len(ADDRESSES) >= _ADDRESS_CACHE_SIZE:
        ADDRESSES.clear()
    ADDRESSES[text] = address
    return address


def _ip_address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def address(value: object, field: str) -> IPAddress:
    if isinstance(value, str):
        return parse_address(value, field)
    if isinstance(value, _IP_TYPES):
        return value
    raise EventError(field, f"must be an IP address string, got {json_kind(value)} {show(value)}")


def same_family(src: IPAddress, dst: IPAddress, field: str) -> None:
    if src.version != dst.version:
        raise EventError(field, f"must be IPv{src.version} like the source address {src}, got {dst}")


def optional_str(value: object, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise EventError(field, f"must be a string, got {json_kind(value)} {show(value)}")


def date_time(value: object, field: str) -> datetime:
    try:
        if isinstance(value, str):
            return times.parse(value)
        if isinstance(value, datetime):
            return times.in_utc(value)
    except times.TimeError as exc:
        raise EventError(field, str(exc)) from None
    raise EventError(field, f"must be a date-time string, got {json_kind(value)} {show(value)}")


def optional_time(value: object, field: str) -> datetime | None:
    return None if value is None else date_time(value, field)


def resolve_ids(
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


def decode_text(data: object, field: str) -> str:
    if isinstance(data, str):
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EventError(field, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    raise EventError(field, f"must be str or bytes, got {type(data).__name__}")


# tuple.__new__ skips the generated keyword-handling __new__; the parsers have
# already checked every field.
def new_event(fields: tuple[Any, ...]) -> FlowEvent:
    return tuple.__new__(FlowEvent, fields)
