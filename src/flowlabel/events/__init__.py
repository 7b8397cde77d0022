"""Flow events and the three wire formats that carry them.

:mod:`.event` defines :class:`FlowEvent` and the field checks; :mod:`.line` is
the named-pipe line, :mod:`.firefly` the firefly message and :mod:`.api` the
HTTP API's event object. Everything public is importable from here.
"""

from .api import format_api, parse_api
from .event import FIELDS, PROTOCOLS, STATES, Data, EventError, FlowEvent
from .firefly import OngoingFirefly, format_firefly, parse_firefly, syslog_header
from .line import format_line, parse_line

__all__ = [
    "FIELDS",
    "PROTOCOLS",
    "STATES",
    "Data",
    "EventError",
    "FlowEvent",
    "OngoingFirefly",
    "format_api",
    "format_firefly",
    "format_line",
    "parse_api",
    "parse_firefly",
    "parse_line",
    "syslog_header",
]
