"""The daemon's log: its format, and lines that could flood it held to a rate."""

from __future__ import annotations

import logging
import sys
import time
import weakref

__all__ = ["RateLimitedLog", "flush_all", "setup"]

_LIVE: weakref.WeakSet[RateLimitedLog] = weakref.WeakSet()


def setup(level: str) -> None:
    """Log lines at ``level`` (one of :data:`flowlabel.defaults.LOG_LEVELS`) and above to stderr."""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


class RateLimitedLog:
    """Warnings about ``what``, at most ``limit`` a second; the rest are counted and summed up in one line."""

    def __init__(self, logger: logging.Logger, limit: int, what: str) -> None:
        self._log = logger
        self._limit = limit
        self._what = what
        self._second = 0
        self._logged = 0
        self._unlogged = 0
        _LIVE.add(self)

    def warning(self, message: str, *args: object) -> None:
        second = int(time.monotonic())
        if second != self._second:
            if self._unlogged:
                self._log.warning("%d more %s were not logged", self._unlogged, self._what)
            self._second = second
            self._logged = self._unlogged = 0
        if self._logged < self._limit:
            self._logged += 1
            self._log.warning(message, *args)
        else:
            self._unlogged += 1

    def flush(self) -> None:
        """Log how many warnings went unlogged now, rather than with the next warning (which may
        never come: a flood's last second would go unsaid)."""
        if self._unlogged:
            self._log.warning("%d more %s were not logged", self._unlogged, self._what)
            self._unlogged = 0


def flush_all() -> None:
    """:meth:`RateLimitedLog.flush` every one of them."""
    for limited in list(_LIVE):
        limited.flush()
