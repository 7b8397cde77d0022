"""``flowlabel top``: the active flows of a running daemon, live, in the manner of ``top``.

Every ``interval`` seconds the daemon's ``GET /flows`` is read; for TCP flows
with a socket on the daemon's host it carries the kernel's statistics, from
which the rate is the bytes acknowledged and received since the last refresh.
Keys: ``r`` sorts by rate, ``t`` by RTT, ``x`` by retransmissions, ``e`` by
experiment, ``s`` by start; ``q`` quits.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, NamedTuple

__all__ = ["SORTS", "Row", "rows", "run"]


class Row(NamedTuple):
    key: tuple[Any, ...]
    experiment: str
    activity: str
    label: str
    source: str
    destination: str
    rate: float | None  # bytes per second
    rtt_ms: float | None
    retrans: int | None
    since: str


#: key: (what the column is called, how rows are ordered; largest first except for "e" and "s")
SORTS: dict[str, tuple[str, Callable[[Row], Any], bool]] = {
    "r": ("RATE", lambda r: -1 if r.rate is None else r.rate, True),
    "t": ("RTT", lambda r: -1 if r.rtt_ms is None else r.rtt_ms, True),
    "x": ("RETRANS", lambda r: -1 if r.retrans is None else r.retrans, True),
    "e": ("EXPERIMENT", lambda r: (r.experiment, r.activity), False),
    "s": ("SINCE", lambda r: r.since, False),
}


def rows(flows: list[dict[str, Any]], previous: dict[tuple[Any, ...], tuple[float, int]], now: float,
         names: Callable[[int, int], tuple[str, str]]) -> list[Row]:
    """The rows for ``flows``; ``previous`` (flow key: (time, bytes)) is updated for the next call."""
    out = []
    seen = set()
    for flow in flows:
        key = (flow["protocol"], flow["src_ip"], flow["src_port"], flow["dst_ip"], flow["dst_port"])
        seen.add(key)
        tcp = flow.get("tcp") or {}
        moved = (tcp.get("bytes_acked") or 0) + (tcp.get("bytes_received") or 0)
        rate = None
        if tcp:
            before = previous.get(key)
            if before is not None and now > before[0]:
                rate = max(0.0, (moved - before[1]) / (now - before[0]))
            previous[key] = (now, moved)
        experiment, activity = names(flow["experiment"], flow["activity"])
        out.append(Row(
            key, experiment, activity, f"{flow['label']:#07x}",
            f"[{flow['src_ip']}]:{flow['src_port']}", f"[{flow['dst_ip']}]:{flow['dst_port']}",
            rate, tcp["rtt_us"] / 1000 if tcp.get("rtt_us") is not None else None,
            tcp.get("total_retrans"), flow.get("start_time") or "-",
        ))
    for gone in set(previous) - seen:
        del previous[gone]
    return out


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B/s", "kB/s", "MB/s", "GB/s"):
        if value < 1000 or unit == "GB/s":
            return f"{value:.1f} {unit}"
        value /= 1000
    return "-"  # unreachable


def lines(table: list[Row], sort: str, width: int) -> list[str]:
    """The screen's lines: a header, then one line per flow, sorted as ``sort`` says."""
    title, order, descending = SORTS[sort]
    table = sorted(table, key=order, reverse=descending)
    cells = [("EXPERIMENT", "ACTIVITY", "LABEL", "SOURCE", "DESTINATION", "RATE", "RTT MS", "RETRANS",
              "SINCE")]
    for r in table:
        rtt = "-" if r.rtt_ms is None else f"{r.rtt_ms:.3f}"
        retrans = "-" if r.retrans is None else str(r.retrans)
        cells.append((r.experiment, r.activity, r.label, r.source, r.destination, _rate(r.rate), rtt, retrans,
                      r.since))
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    out = [f"flowlabel top: {len(table)} flows, sorted by {title} (r rate, t rtt, x retrans, e experiment, "
           f"s start, q quit)"]
    out += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]
    return [line[:width] for line in out]


def run(fetch: Callable[[], list[dict[str, Any]]], names: Callable[[int, int], tuple[str, str]],
        interval: float, sort: str) -> None:
    """The live view, until ``q`` (or Ctrl-C)."""
    import curses

    def main(screen: Any) -> None:
        nonlocal sort
        curses.curs_set(0)
        screen.timeout(100)
        previous: dict[tuple[Any, ...], tuple[float, int]] = {}
        due = 0.0
        shown: list[str] = []
        while True:
            now = time.monotonic()
            if now >= due:
                try:
                    table = rows(fetch(), previous, now, names)
                    height, width = screen.getmaxyx()
                    shown = lines(table, sort, width - 1)[: height - 1]
                except Exception as exc:  # the daemon went away: say so and keep trying
                    shown = [f"flowlabel top: {exc}"]
                due = now + interval
                screen.erase()
                for y, text in enumerate(shown):
                    screen.addstr(y, 0, text)
                screen.refresh()
            key = screen.getch()
            if key in (ord("q"), ord("Q")):
                return
            if key != -1 and chr(key) in SORTS:
                sort = chr(key)
                due = 0.0

    # The terminal's own size: curses would prefer LINES and COLUMNS from the environment, which
    # shells and test runners leave behind and which go stale on a resize.
    for name in ("LINES", "COLUMNS"):
        os.environ.pop(name, None)
    with contextlib.suppress(KeyboardInterrupt):
        curses.wrapper(main)
