"""Date-times of flow events, on the wire and on disk: one parser and one written form.

Read: RFC 3339 date-times with a UTC offset (``Z`` or ``+hh:mm``; ``T``, ``t`` or a
space between date and time); fractions beyond microseconds are cut off, leap
seconds (``:60``) are refused. Written: UTC with microseconds and ``Z``, as in
``2024-03-28T08:58:48.899646Z``, in fireflies, API answers and the state file.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from ._text import show

UTC = timezone.utc
EXAMPLE = "2024-03-28T08:58:48.899646Z"

_DATE_TIME = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:([Zz])|([+-])(\d\d):(\d\d))",
    re.ASCII,
)


class TimeError(ValueError):
    """Not a date-time this module reads; the message says why, quoting the value."""


def parse(text: str) -> datetime:
    """The date-time ``text`` names, in UTC."""
    match = _DATE_TIME.fullmatch(text)
    if match is None:
        raise TimeError(f"must be an RFC 3339 date-time such as '{EXAMPLE}', got {show(text)}")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    micros = int(fraction[:6].ljust(6, "0")) if fraction else 0
    try:
        parsed = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micros, UTC)
        if not zulu and (off_h != "00" or off_m != "00"):
            if int(off_h) > 23 or int(off_m) > 59:
                raise ValueError("UTC offset out of range")
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            parsed -= offset if sign == "+" else -offset
    except (ValueError, OverflowError) as exc:
        raise TimeError(f"must be a valid date-time, got {show(text)} ({exc})") from None
    return parsed


def in_utc(value: datetime) -> datetime:
    """An aware date-time in UTC; TimeError for a naive one or one UTC cannot hold."""
    if value.utcoffset() is None:
        raise TimeError(f"must be timezone-aware, got naive {show(value)}")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise TimeError(f"must be representable in UTC, got {show(value)}") from None


def format_time(value: datetime) -> str:
    """The written form: UTC, microseconds, ``Z``."""
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def now() -> datetime:
    return datetime.now(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_microseconds(value: datetime) -> int:
    """Microseconds since 1970 (UTC): how compact records keep a time.

    Through the float timestamp, which is exact to the microsecond for the
    next 200 years and takes a third of the time of timedelta arithmetic.
    """
    return round(value.timestamp() * 1_000_000)


def format_microseconds(value: int) -> str:
    """:func:`format_time` of a time kept as microseconds since 1970."""
    return format_time(from_microseconds(value))


def from_microseconds(value: int) -> datetime:
    try:
        return _EPOCH + timedelta(microseconds=value)
    except OverflowError:
        raise ValueError(f"{value} microseconds since 1970 is beyond the year 9999") from None
