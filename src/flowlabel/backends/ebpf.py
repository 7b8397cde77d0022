"""The eBPF backend: keeps the classifier's flow map in step with the active flows.

A batch of changes becomes, per flow, its final state in the batch (a label,
or gone), so a start and an end of the same flow in one read cancel out and
every new label goes into the map with one batched update.

Every call into the :class:`~flowlabel.marker.Marker` runs on the event
loop: map updates take microseconds, and the rare netlink queries (attaching,
re-reading the host's addresses) take care of pyroute2's own event loop.

The flow map holds ``maxFlows`` entries; a flow beyond them is refused and
counted, never evicting one that is marked.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ..config import Marking
from ..errors import InterfaceError, MapFullError, MarkerError
from ..flowtable import ENDED, Change, FlowRecord
from ..lifecycle import Reaper
from ..metrics import Family

if TYPE_CHECKING:
    from ..marker import Marker
    from ..rules import CompiledRules

__all__ = ["EbpfBackend"]

log = logging.getLogger(__name__)



def _ifindex(name: str) -> int | None:
    """The interface's index in this network namespace, or None if there is no such interface."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


class EbpfBackend:
    """Marks the flows of the table on the configured (or discovered) interfaces."""

    name = "ebpf"

    def __init__(self, config: Marking, rules: CompiledRules | None = None) -> None:
        self.config = config
        self._compiled = rules
        self.rules = list(rules.rules) if rules is not None else []
        self._marker: Marker | None = None
        self.failures = 0
        self.reaper: Reaper | None = None
        # The interfaces chosen at start, with the index each had when last attached (None: gone).
        self._indexes: dict[str, int | None] = {}

    @property
    def interfaces(self) -> list[str]:
        return self._marker.interfaces if self._marker is not None else []

    def attachment_modes(self) -> dict[str, str]:
        return self._marker.attachment_modes() if self._marker is not None else {}

    def _target_interfaces(self) -> list[str]:
        names = self.config.interfaces
        if self.config.discover_interfaces:
            from ..netif import discover_interfaces

            found = discover_interfaces()
            log.info("interfaces with a global IPv6 address or the IPv6 default route: %s",
                     ", ".join(found) or "none")
            names = list(dict.fromkeys(names + found))
        if not names:
            raise InterfaceError(
                "no interface to mark on: none is configured and none has a global IPv6 address"
            )
        return names

    def start(self, records: Sequence[FlowRecord]) -> list[bytes]:
        """Attach the classifier, then mark ``records``; returns the (keys of) flows it could not take."""
        from ..marker import Marker

        cfg = self.config
        targets = self._target_interfaces()
        self._marker = Marker(
            targets,
            attach=cfg.attach_mode,
            remove_qdisc=cfg.remove_qdisc,
            program_path=cfg.program,
            debug=cfg.debug_mode,
            max_flows=cfg.max_flows,
            rules=self._compiled,
        )
        self._indexes = {name: _ifindex(name) for name in targets}
        failed = self._add([(record.key, record.label) for record in records])
        # After the restored flows are in: those whose socket is gone end at the first poll.
        self.reaper = Reaper(self._marker, cfg.idle_timeout, cfg.socket_tracking)
        self.reaper.start()
        return failed

    def rule_hits(self) -> list[int]:
        """Packets each rule decided so far (zeros before the classifier is loaded)."""
        if self._marker is None:
            return [0] * len(self.rules)
        try:
            return self._marker.rule_hits() or [0] * len(self.rules)
        except MarkerError as exc:
            log.warning("cannot read the rules' packet counts: %s", exc)
            return [0] * len(self.rules)

    def check_interfaces(self) -> None:
        """Follow interfaces that went away or came back (a new device under the same name)."""
        marker = self._marker
        if marker is None:
            return
        for name, known in self._indexes.items():
            index = _ifindex(name)
            if index == known:
                continue
            self._indexes[name] = index
            try:
                if index is None:
                    log.warning("interface %s is gone; marking on it resumes when it is back", name)
                    if name in marker.interfaces:
                        marker.detach(name)
                else:
                    marker.attach(name)
                    log.info("interface %s is back (index %d): marking on it again", name, index)
            except MarkerError as exc:
                log.warning("interface %s: %s", name, exc)

    def apply(self, changes: Iterable[Change]) -> list[bytes]:
        """Write the changes to the map; returns the (keys of) flows that could not be added."""
        final: dict[bytes, int | None] = {}
        for change in changes:
            if change.relabel and change.record is not None:
                final[change.record.key] = None if change.outcome == ENDED else change.record.label
        if not final:
            return []
        if self._marker is None:
            raise MarkerError("the eBPF backend is not started")
        for key, label in final.items():
            if label is None:
                self._marker.remove_key(key)
        return self._add([(key, label) for key, label in final.items() if label is not None])

    def _add(self, items: list[tuple[bytes, int]]) -> list[bytes]:
        if not items or self._marker is None:
            return []
        failed = self._add_or_report(self._marker, items)
        for _, exc in failed:
            log.warning("not marked: %s", exc)
        self.failures += len(failed)
        return [key for key, _ in failed]

    @staticmethod
    def _add_or_report(marker: Marker, items: list[tuple[bytes, int]]) -> list[tuple[bytes, MapFullError]]:
        try:
            marker.add_many_keys(items)
            return []
        except MapFullError:
            pass
        # Some may fit: add one by one to find out which.
        failed = []
        for key, label in items:
            try:
                marker.add_key(key, label)
            except MapFullError as exc:
                failed.append((key, exc))
        return failed

    def stop(self) -> None:
        """Detach from every interface (the interfaces are left as they were found)."""
        if self.reaper is not None:
            self.reaper.close()
            self.reaper = None
        if self._marker is not None:
            marker, self._marker = self._marker, None
            marker.close()

    def families(self) -> list[Family]:
        marker = self._marker
        if marker is None:
            return []
        try:
            counters = marker.counters()
        except MarkerError as exc:
            log.warning("cannot read the classifier's counters: %s", exc)
            counters = {}
        modes = marker.attachment_modes()
        reaper = self.reaper.families() if self.reaper is not None else []
        return [*reaper,
            Family(
                "flowlabel_classifier_packets_total",
                "counter",
                "Packets the classifier saw, by what it did with them (summed over CPUs)",
                [((("result", name),), value) for name, value in sorted(counters.items())],
            ),
            Family.single("flowlabel_map_entries", "gauge", "Entries in the classifier's flow map",
                          len(marker)),
            Family.single("flowlabel_map_capacity", "gauge", "Flows the classifier's map can hold",
                          marker.max_flows),
            Family(
                "flowlabel_interface_attached",
                "gauge",
                "Interfaces the classifier is attached to, with how (tcx or tc)",
                [((("interface", name), ("mode", mode)), 1) for name, mode in sorted(modes.items())],
            ),
            Family.single("flowlabel_map_full_total", "counter",
                          "Flows not marked because the flow map was full", self.failures),
            Family(
                "flowlabel_rule_packets_total",
                "counter",
                "Packets of flows not announced that each site rule decided (marked or left alone)",
                [((("rule", rule.where),), hits) for rule, hits in zip(self.rules, self.rule_hits())],
            ),
        ]
