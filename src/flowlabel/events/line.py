"""The named-pipe line (flowd's format).

One event per line, eight fields separated by any amount of white space::

    state protocol src_ip src_port dst_ip dst_port experiment activity
    start tcp 2001:db8::1 2345 2001:db8::2 5777 2 15

``state`` is ``start``, ``ongoing`` or ``end`` and ``protocol`` is ``tcp`` or
``udp``, in any case. Ports and IDs are decimal digits. When a
:class:`~flowlabel.registry.Registry` is given, ``experiment`` and ``activity``
may also be registry names (write spaces as ``-`` or ``_``, e.g.
``atlas Production-Input``). See :func:`parse_line` and :func:`format_line`.
"""

from __future__ import annotations

from .._text import show
from ..label import ACTIVITY_MAX, EXPERIMENT_MAX
from ..registry import Registry
from .event import (
    ADDRESSES,
    FIELDS,
    PROTOCOL_WORDS,
    STATE_WORDS,
    Data,
    EventError,
    FlowEvent,
    decode_text,
    new_event,
    parse_address,
    port_text,
    protocol_word,
    resolve_ids,
    same_family,
    state_word,
)

__all__ = ["format_line", "parse_line"]

# The lookups of the hot path, bound once: Python 3.11 calls a method of an imported
# name through a bound method object made on every call.
_state_word = STATE_WORDS.get
_protocol_word = PROTOCOL_WORDS.get
_cached_address = ADDRESSES.get



def parse_line(line: Data, registry: Registry | None = None) -> FlowEvent:
    """Parse one named-pipe line (see the module docstring).

    ``experiment`` and ``activity`` may be registry names if ``registry`` is
    given. The returned event has no times and no application.
    """
    text = line if type(line) is str else decode_text(line, "line")
    parts = text.split()
    if len(parts) != 8:
        raise EventError(
            "line", f"expected 8 fields ({' '.join(FIELDS)}), got {len(parts)}: {show(text)}"
        )
    state, protocol, src_text, sport_text, dst_text, dport_text, exp_text, act_text = parts
    state = _state_word(state) or state_word(state, "state")
    protocol = _protocol_word(protocol) or protocol_word(protocol, "protocol")
    src = _cached_address(src_text) or parse_address(src_text, "src_ip")
    sport = port_text(sport_text, "src_port")
    dst = _cached_address(dst_text) or parse_address(dst_text, "dst_ip")
    dport = port_text(dport_text, "dst_port")
    if src.version != dst.version:
        same_family(src, dst, "dst_ip")
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
            experiment, activity = resolve_ids(exp_text, act_text, registry, ("experiment", "activity"))
    else:
        experiment, activity = resolve_ids(exp_text, act_text, registry, ("experiment", "activity"))
    return new_event((state, protocol, src, dst, sport, dport, experiment, activity, None, None, None))


def format_line(event: FlowEvent) -> str:
    """The named-pipe line for ``event`` (times and application are not part of it)."""
    return (
        f"{event.state} {event.protocol} {event.src} {event.sport} "
        f"{event.dst} {event.dport} {event.experiment} {event.activity}"
    )
