"""Where flow events come from: a named pipe, firefly datagrams and the HTTP API.

Every source turns its input into :class:`~flowlabel.events.FlowEvent` objects
and hands them to an :class:`EventSink` (the daemon), in batches where the
input comes in batches. Bad input never reaches the sink as an event: the
source reports it with :meth:`EventSink.reject` and carries on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..events import FlowEvent
from ..flowtable import Change

__all__ = ["EventSink"]


class EventSink(Protocol):
    def submit(self, events: Sequence[FlowEvent], source: str) -> list[Change]:
        """Apply ``events`` in order; one :class:`~flowlabel.state.Change` per event."""
        ...

    def reject(self, source: str, reason: str) -> None:
        """Count and log one input from ``source`` that was not a valid event."""
        ...
