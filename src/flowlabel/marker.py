"""The Marker: the classifier on the egress of interfaces, and the flows it marks.

It composes the parts of :mod:`flowlabel.bpf`: a loaded :class:`Program` per
kind of device (with and without a link-layer header) sharing one
:class:`FlowMap`, and an :class:`Attachment` per interface; it turns each flow
into the map key of its egress direction. Importing this module works
everywhere; creating a Marker fails with a clear
:class:`~flowlabel.errors.MarkerError` where the kernel side cannot run.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import suppress
from typing import TYPE_CHECKING, Union

from .bpf.attach import TC_HANDLE, TC_PRIORITY, Attachment, tcx_program_names, tcx_programs
from .bpf.ext import bundled_object, extension, libbpf_version
from .bpf.features import KernelFeatures, has_tcx, kernel_features
from .bpf.flowmap import FlowMap
from .bpf.program import Program, ProgramInfo, TestRun
from .defaults import ATTACH_MODES, MAX_FLOWS, MAX_FLOWS_LIMIT
from .errors import InterfaceError, MapFullError, MarkerError
from .flow import (
    FLOW_KEY,
    PROTOCOL_NAMES,
    PROTOCOL_NUMBERS,
    Flow,
    flow_key,
    flow_of_key,
    key_destination,
    key_protocol,
    key_source,
    reversed_key,
)
from .label import LABEL_MAX
from .netif import NetnsHome, link, local_addresses

if TYPE_CHECKING:
    from .rules import CompiledRules

__all__ = [
    "TC_HANDLE",
    "TC_PRIORITY",
    "KernelFeatures",
    "Marker",
    "Program",
    "ProgramInfo",
    "TestRun",
    "bundled_object",
    "kernel_features",
    "libbpf_version",
    "tcx_program_names",
    "tcx_programs",
]

log = logging.getLogger(__name__)

#: Seconds a read of the host's addresses is trusted when a flow has no local end.
LOCAL_ADDRESS_TTL = 2.0


class Marker:
    """The classifier attached to the egress of interfaces, and its flows.

    ``with Marker(["eth0"]) as m: m.add(flow, label)`` marks every packet of
    ``flow`` leaving eth0 with ``label`` until the flow is removed or the Marker
    closes. ``attach`` is ``"tcx"`` (a TCX link, kernel 6.6+), ``"tc"`` (a clsact
    qdisc with a direct-action cls_bpf filter) or ``"auto"`` (TCX where the kernel
    has it). ``remove_qdisc`` deletes on close a clsact qdisc this Marker created
    (never one that was there before, nor one that others have put filters on since).

    ``rules`` (:func:`flowlabel.rules.compile_rules`) are site rules for the
    packets of flows that are not in the map.

    One Marker per interface: a second one on the same interface raises
    AttachConflictError until the first closes (or its process dies).
    """

    def __init__(
        self,
        interfaces: Iterable[str] = ("lo",),
        *,
        attach: str = "auto",
        remove_qdisc: bool = False,
        program_path: Union[str, os.PathLike[str], None] = None,
        debug: bool = False,
        max_flows: int = MAX_FLOWS,
        rules: CompiledRules | None = None,
    ) -> None:
        if attach not in ATTACH_MODES:
            raise ValueError(f"attach mode must be one of {', '.join(ATTACH_MODES)}, not {attach!r}")
        if not _is_int(max_flows):
            raise TypeError(f"max_flows must be an int, not {type(max_flows).__name__}")
        if not 1 <= max_flows <= MAX_FLOWS_LIMIT:
            raise ValueError(f"max_flows must be between 1 and {MAX_FLOWS_LIMIT}, not {max_flows}")
        if isinstance(interfaces, str):
            interfaces = [interfaces]  # one name, not its letters
        extension()  # here, not at the first attach: NotSupportedError where the kernel side cannot run
        self.attach_mode = attach
        self.max_flows = max_flows
        self._remove_qdisc = remove_qdisc
        self._program_path = program_path
        self._debug = debug
        self._rules = rules
        self._tcx = attach == "tcx" or (attach == "auto" and has_tcx())
        self._programs: dict[bool, Program] = {}  # by l3
        self._flows: FlowMap | None = None  # the programs' shared flow map
        # The flow, or flows (with the label each asked for, most recent last), holding each map key.
        self._owners: dict[bytes, bytes | dict[bytes, int]] = {}
        self._attachments: dict[str, Attachment] = {}
        self._local: frozenset[bytes] = frozenset()  # packed addresses
        self._local_read = 0.0
        self._closed = False
        self._home = NetnsHome()
        try:
            for name in dict.fromkeys(interfaces):
                self.attach(name)
        except BaseException:
            self.close()
            raise
        _open_markers.add(self)

    # -- programs and interfaces ----------------------------------------------

    def _program(self, l3: bool) -> Program:
        prog = self._programs.get(l3)
        if prog is None:
            other = next(iter(self._programs.values()), None)
            prog = Program(self._program_path, debug=self._debug, l3=l3, max_flows=self.max_flows,
                           tcx=self._tcx, share_flows_with=other, rules=self._rules)
            self._programs[l3] = prog
            if prog.flows is None:
                raise MarkerError(f"{prog.path} has no flow map")
            self._flows = prog.flows
            kind = "without a link-layer header" if l3 else "with Ethernet"
            if prog.writer is not None:
                log.info("classifier for devices %s: direct writer on", kind)
            else:
                log.info("classifier for devices %s: direct writer off (%s); every packet is written "
                         "with a helper call", kind, prog.writer_missing)
        return prog

    @property
    def interfaces(self) -> list[str]:
        return list(self._attachments)

    def attachment_modes(self) -> dict[str, str]:
        """How the classifier sits on each interface: ``"tcx"`` or ``"tc"``."""
        return {name: a.mode for name, a in self._attachments.items()}

    def attach(self, ifname: str) -> None:
        """Attach to one more interface's egress (again, if it went away and came back)."""
        self._check_open()
        with self._home.entered():
            old = self._attachments.pop(ifname, None)
            if old is not None:
                old.detach()
            found = link(ifname)
            self._attachments[ifname] = Attachment(found, self._program(found.l3), self.attach_mode,
                                                   self._remove_qdisc)

    def detach(self, ifname: str) -> None:
        """Take the classifier off one interface; flows stay in the map."""
        att = self._attachments.pop(ifname, None)
        if att is None:
            raise InterfaceError(f"the marker is not attached to {ifname!r}")
        with self._home.entered():
            att.detach()

    # -- flows ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise MarkerError("the marker is closed")

    def _map(self) -> FlowMap:
        self._check_open()
        if self._flows is None:
            raise MarkerError("the marker is attached to no interface: it has no flow map yet")
        return self._flows

    def _refresh_local_addresses(self) -> None:
        """Re-read the host's addresses, at most every couple of seconds."""
        now = time.monotonic()
        if not self._local_read or now - self._local_read > LOCAL_ADDRESS_TTL:
            with self._home.entered():
                self._local = frozenset(addr.packed for addr in local_addresses())
            self._local_read = now

    # The flows a map entry is held by are the packed keys of the flows as announced (flow_key):
    # bytes the daemon's flow table holds already, so holding costs a reference, not a copy.

    def _egress_keys(self, key: bytes) -> tuple[bytes, ...]:
        """The map keys of a flow not held yet: as it leaves this host; both ways if neither end is local."""
        src, dst = key_source(key), key_destination(key)
        for attempt in range(2):
            if src in self._local:
                return (key,)
            if dst in self._local:
                return (reversed_key(key),)
            if attempt == 0:
                self._refresh_local_addresses()
        return (key, reversed_key(key))

    def _holds(self, key: bytes, holder: bytes) -> bool:
        owner = self._owners.get(key)
        return owner is not None and (holder in owner if isinstance(owner, dict) else owner == holder)

    def _held_or_egress_keys(self, holder: bytes) -> tuple[bytes, ...]:
        """The map keys a flow holds (what was written for it stays its own), else its egress keys."""
        reverse = reversed_key(holder)
        held = tuple(key for key in (holder, reverse) if self._holds(key, holder))
        return held or self._egress_keys(holder)

    def _own(self, key: bytes, holder: bytes, label: int, current: int | None) -> None:
        """Record that ``holder`` holds ``key`` with ``label`` (the most recent holder's label applies).

        ``current`` is the key's label before, needed when a second flow joins the first.
        """
        owners = self._owners
        owner = owners.get(key)
        if owner is None or (not isinstance(owner, dict) and owner == holder):
            owners[key] = holder
            return
        if not isinstance(owner, dict):
            owner = owners[key] = {owner: label if current is None else current}
        owner.pop(holder, None)
        owner[holder] = label

    def _shared_label(self, flows: FlowMap, key: bytes, holder: bytes) -> int | None:
        """The key's label, where one other flow holds it already (it is kept, to share the key)."""
        owner = self._owners.get(key)
        if owner is None or isinstance(owner, dict) or owner == holder:
            return None
        return flows.get(key)

    @staticmethod
    def _key(flow: Flow) -> bytes:
        if not isinstance(flow, Flow):
            raise TypeError(f"a flow is a flowlabel.flow.Flow (Flow.of(...)), not {type(flow).__name__}")
        if not flow.is_ipv6:
            raise ValueError(f"IPv4 flows have no flow label: {flow}")
        return flow_key(flow)

    def add(self, flow: Flow, label: int) -> None:
        """Mark the flow's packets with ``label`` (20 bits); replaces an earlier label.

        A flow and its reverse may share one map entry (when one end is local,
        both leave the host as the same packets): each holds it, the entry
        stays until both are removed, and the label last added applies.
        """
        self.add_key(self._key(flow), label)

    def add_key(self, holder: bytes, label: int) -> None:
        """:meth:`add` for the flow with this packed key (flowlabel.flow.flow_key)."""
        flows = self._flows if not self._closed else None
        if flows is None:  # one check on the hot path; _map() says what is wrong
            flows = self._map()
        _check_key(holder)
        _check_label(label)
        done: list[bytes] = []
        for key in self._held_or_egress_keys(holder):
            current = self._shared_label(flows, key, holder)
            try:
                flows.put(key, label)
            except MapFullError:
                for written in done:  # a flow is marked both ways or not at all
                    self._release(flows, written, holder)
                raise MapFullError(f"the flow map is full ({self.max_flows} flows); "
                                   f"cannot add {flow_of_key(holder)}") from None
            self._own(key, holder, label, current)
            done.append(key)

    def add_many(self, items: Iterable[tuple[Flow, int]]) -> int:
        """Add many flows with one batched map update; returns how many map entries were written.

        MapFullError, and nothing added, when the new entries would not fit.
        """
        return self.add_many_keys([(self._key(flow), label) for flow, label in items])

    def add_many_keys(self, items: list[tuple[bytes, int]]) -> int:
        """:meth:`add_many` for flows given by their packed keys."""
        flows = self._map()
        writes: dict[bytes, int] = {}
        owned: list[tuple[bytes, bytes, int, int | None]] = []
        for holder, label in items:
            _check_key(holder)
            _check_label(label)
            for key in self._held_or_egress_keys(holder):
                writes.pop(key, None)
                writes[key] = label  # the last label for a key applies, as with add()
                owned.append((key, holder, label, self._shared_label(flows, key, holder)))
        owners = self._owners
        try:
            # A key without an owner is not in the map: the Marker alone writes it.
            written = flows.put_many(list(writes.items()), [key not in owners for key in writes])
        except MapFullError:
            raise
        except MarkerError:
            # Partly written: own what reached the map, so that removing it works.
            for key, holder, label, current in owned:
                if flows.get(key) is not None:
                    self._own(key, holder, label, current)
            raise
        written_now: dict[bytes, int] = {}  # what an earlier item of this batch gave a key
        for key, holder, label, current in owned:
            self._own(key, holder, label, written_now.get(key, current))
            written_now[key] = label
        return written

    def _release(self, flows: FlowMap, key: bytes, holder: bytes) -> bool:
        """``holder`` no longer holds ``key``: delete the entry after its last holder, or relabel it."""
        owners = self._owners
        owner = owners.get(key)
        if owner is None:
            return False
        if not isinstance(owner, dict):
            if owner != holder:
                return False
            flows.delete(key)
            del owners[key]
            return True
        if holder not in owner:
            return False
        applied = next(reversed(owner)) == holder
        del owner[holder]
        label = owner[next(reversed(owner))]
        if len(owner) == 1:
            owners[key] = next(iter(owner))
        if applied:
            flows.put(key, label)  # the next most recent holder's label
        return True

    def remove(self, flow: Flow) -> bool:
        """Stop marking the flow; False if it was not marked.

        Only the entries the flow holds are touched, wherever its ends are now.
        """
        return self.remove_key(self._key(flow))

    def remove_key(self, holder: bytes) -> bool:
        """:meth:`remove` for the flow with this packed key."""
        flows = self._flows if not self._closed else None
        if flows is None:
            flows = self._map()
        _check_key(holder)
        removed = self._release(flows, holder, holder)
        return self._release(flows, reversed_key(holder), holder) or removed

    def get(self, flow: Flow) -> int | None:
        """The label the flow's packets get, or None."""
        flows = self._map()
        for key in self._held_or_egress_keys(self._key(flow)):
            label = flows.get(key)
            if label is not None:
                return label
        return None

    # -- what the lifecycle of flows needs ------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """The idle clock's new epoch (seconds): each flow's next packet records it."""
        self._map().set_epoch(epoch)

    def idle_keys(self, epochs: int) -> list[bytes]:
        """Map keys whose flows carried no packet, and were not written, for ``epochs`` epochs."""
        return self._map().idle(epochs)

    def socket_key(self, local: bytes, remote: bytes, local_port: int, remote_port: int) -> bytes:
        """The map key of the TCP connection of a local socket: its packets leave with local as source."""
        return FLOW_KEY.pack(local, remote, local_port, remote_port, PROTOCOL_NUMBERS["tcp"])

    def local_tcp_keys(self) -> list[bytes]:
        """Held keys of TCP flows that leave this host from a local address: each has a socket here."""
        self._map()
        self._refresh_local_addresses()
        tcp, local = PROTOCOL_NUMBERS["tcp"], self._local
        return [key for key in self._owners if key_protocol(key) == tcp and key_source(key) in local]

    def holders_of(self, key: bytes) -> list[bytes]:
        """The flows (packed keys, as announced) holding a map key; none if it is not held."""
        owner = self._owners.get(key)
        if owner is None:
            return []
        return list(owner) if isinstance(owner, dict) else [owner]

    def holders(self, flow: Flow) -> list[Flow]:
        """The flows holding the map entry of ``flow``, taken as it leaves this host (src is local)."""
        return [flow_of_key(key) for key in self.holders_of(self._key(flow))]

    def __iter__(self) -> Iterator[tuple[Flow, int]]:
        """The map's entries as (flow in egress orientation, label)."""
        flows = self._map()
        for raw, label in flows.entries():
            yield flow_of_key(raw), label

    def map_entries(self) -> int:
        """Entries the kernel's flow map holds.

        ``len()`` is the Marker's own bookkeeping; only the map can tell whether
        something else (another program with the map) changed it.
        """
        return self._map().count_entries()

    def __len__(self) -> int:
        """Map entries in use: a flow marked both ways counts twice, a flow and its reverse once."""
        return len(self._flows) if self._flows is not None else 0

    def clear(self) -> None:
        """Remove every flow."""
        self._map().clear()
        self._owners.clear()

    def counters(self) -> dict[str, int]:
        """The classifier's counters, summed over CPUs and over its copies."""
        self._check_open()
        totals: dict[str, int] = {}
        for prog in self._programs.values():
            for name, value in prog.counters().items():
                totals[name] = totals.get(name, 0) + value
        return totals

    def rule_hits(self) -> list[int]:
        """Packets each site rule decided, summed over CPUs, in rule order (empty without rules)."""
        self._check_open()
        prog = next(iter(self._programs.values()), None)
        return prog.rules.hits() if prog is not None and prog.rules is not None else []

    # -- lifetime -------------------------------------------------------------

    def close(self) -> None:
        """Detach from every interface and unload. Idempotent; run at interpreter exit too."""
        if self._closed:
            return
        self._closed = True
        errors = []
        with self._home.entered():
            for att in self._attachments.values():
                try:
                    att.detach()
                except MarkerError as exc:
                    errors.append(exc)
        self._attachments.clear()
        self._home.close()
        for prog in self._programs.values():
            prog.close()
        self._programs.clear()
        self._flows = None
        _open_markers.discard(self)
        if errors:
            raise errors[0]

    def __enter__(self) -> Marker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_open_markers: weakref.WeakSet[Marker] = weakref.WeakSet()


@atexit.register
def _close_open_markers() -> None:
    for marker in list(_open_markers):
        with suppress(MarkerError):
            marker.close()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_label(label: object) -> None:
    if not _is_int(label):
        raise TypeError(f"a flow label is an int, not {type(label).__name__}")
    if not 0 <= label <= LABEL_MAX:  # type: ignore[operator]
        raise ValueError(f"a flow label has 20 bits: {label:#x} is out of range")


def _check_key(key: object) -> None:
    """A packed key as flowlabel.flow.flow_key writes it; anything else would be read past its end
    or cut short by the kernel, and mark nothing."""
    if not isinstance(key, bytes) or len(key) != FLOW_KEY.size or key[-3:] != bytes(3) \
            or key[FLOW_KEY.size - 4] not in PROTOCOL_NAMES:
        shown = repr(key)[:60]
        raise ValueError(f"not a packed flow key (flowlabel.flow.flow_key: {FLOW_KEY.size} bytes, "
                         f"TCP or UDP, zero padding): {shown}")
