"""``flowlabel cleanup``: remove what a killed marker left on the interfaces, and nothing else.

A marker that ends cleanly leaves nothing behind. One that is killed leaves, on
the tc path, its cls_bpf filter (the classifier, still marking with a map that
nobody updates any more) and the clsact qdisc it created. Cleanup finds them in
the current network namespace:

- the filter at flowlabel's handle and priority whose program is flowlabel's
  (named in the netlink filter dump); a filter of any other program is left;
- the clsact qdisc, only when a marker recorded creating it on that interface,
  left its filter on it, and no filter of anyone else's remains on it;
- TCX links end with their process, so a flowlabel TCX link still present
  belongs to a running marker and is reported, not touched.

Interfaces whose lock a running marker holds are skipped.
"""

from __future__ import annotations

from typing import NamedTuple

from .bpf.attach import (
    TC_HANDLE,
    TC_PRIORITY,
    InterfaceLock,
    qdisc_record,
    remove_filter,
    remove_recorded_qdisc,
    tcx_programs,
)
from .bpf.program import PROGRAM_NAME
from .errors import AttachConflictError, InterfaceError
from .netif import egress_filter_program, links

__all__ = ["Leftover", "cleanup"]

#: The kernel keeps 15 characters of a program's name.
_OURS = PROGRAM_NAME[:15]


class Leftover(NamedTuple):
    interface: str
    what: str  #: "filter", "qdisc", "tcx link" or "interface"
    action: str  #: "removed", "would remove" or "kept"
    detail: str

    def __str__(self) -> str:
        return f"{self.interface}: {self.action} {self.what}: {self.detail}"


def cleanup(*, dry_run: bool = False, interfaces: list[str] | None = None) -> list[Leftover]:
    """Remove (with ``dry_run``: list) flowlabel's leftovers on the interfaces of this namespace."""
    found: list[Leftover] = []
    remove = "would remove" if dry_run else "removed"
    present = links()
    if interfaces is not None:
        # A mistyped name would otherwise look like an interface with nothing left on it.
        unknown = sorted(set(interfaces) - {link.name for link in present})
        if unknown:
            raise InterfaceError(f"no interface {', '.join(unknown)} in this network namespace")
    for link in present:
        if interfaces is not None and link.name not in interfaces:
            continue
        try:
            lock = InterfaceLock(link.name)
        except AttachConflictError as exc:
            found.append(Leftover(link.name, "interface", "kept", str(exc).split(";")[0]))
            continue
        try:
            name = egress_filter_program(link.ifindex, TC_HANDLE, TC_PRIORITY)
            if name == _OURS:
                if not dry_run:
                    remove_filter(link.name, link.ifindex)
                found.append(Leftover(link.name, "filter", remove,
                                      f"cls_bpf {name} at handle {TC_HANDLE:#x} priority {TC_PRIORITY:#x}"))
            if name != _OURS:
                # A killed marker leaves its filter on the qdisc it created; a record without one
                # outlived its namespace (whose inode number a new one reuses): the qdisc is not ours.
                if not dry_run:
                    qdisc_record(link.name).unlink(missing_ok=True)
            elif dry_run and qdisc_record(link.name).exists():
                # The filter is still there in a dry run; the qdisc goes once it does.
                found.append(Leftover(link.name, "qdisc", remove, "clsact, created by a flowlabel marker "
                                      "(if no other filter remains on it)"))
            elif remove_recorded_qdisc(link.name, link.ifindex, dry_run=dry_run):
                found.append(Leftover(link.name, "qdisc", remove, "clsact, created by a flowlabel marker"))
            for prog_id, prog_name in tcx_programs(link.ifindex):
                if prog_name == _OURS:
                    found.append(Leftover(link.name, "tcx link", "kept",
                                          f"program {prog_id} is held by a running process"))
        finally:
            lock.release()
    return found
