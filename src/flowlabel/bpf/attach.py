"""The classifier on an interface's egress: a TCX link or a cls_bpf filter, and the lock that
keeps one marker per interface."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import AttachConflictError, InterfaceError
from ..netif import Link, clsact_has_filters, egress_filter_program
from .ext import errno_error, extension
from .program import Program

log = logging.getLogger(__name__)

#: "tcx" (a TCX link, Linux 6.6), "tc" (a clsact qdisc with a direct-action cls_bpf filter),
#: or "auto" (TCX where the kernel has it).
ATTACH_MODES = ("auto", "tcx", "tc")
#: The cls_bpf filter's handle and priority on the clsact egress hook.
TC_HANDLE = 0x5C17
TC_PRIORITY = 0x5C17
#: Where per-interface locks live; a lock dies with its process.
LOCK_DIR = Path(os.environ.get("FLOWLABEL_LOCK_DIR", "/run/flowlabel/locks"))


def _netns_id() -> str:
    try:
        return str(os.stat("/proc/thread-self/ns/net").st_ino)
    except OSError:
        return "0"


def _interface_id(ifname: str) -> str:
    return f"{_netns_id()}-{ifname}"


def qdisc_record(ifname: str) -> Path:
    """Where a marker notes that it created the clsact qdisc on ``ifname``.

    The note outlives a killed marker, so that the next one, or ``flowlabel
    cleanup``, can remove that qdisc and no other.
    """
    return LOCK_DIR / f"{_interface_id(ifname)}.qdisc"


class InterfaceLock:
    """An flock per (network namespace, interface): one Marker per interface at a time."""

    def __init__(self, ifname: str) -> None:
        import fcntl

        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        self.path = LOCK_DIR / f"{_interface_id(ifname)}.lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            try:
                holder = self.path.read_text().strip()
            except OSError:
                holder = "?"
            raise AttachConflictError(
                f"another flowlabel marker (pid {holder or '?'}) is attached to {ifname!r}; close it "
                "first (one marker per interface)"
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Attachment:
    """The classifier on one interface's egress, as a TCX link or a cls_bpf filter."""

    def __init__(self, link: Link, program: Program, mode: str, remove_qdisc: bool) -> None:
        self.name = link.name
        self.ifindex = link.ifindex
        self._ffi, self._lib = extension()
        self._lock = InterfaceLock(link.name)
        self._link: Any = self._ffi.NULL
        self.created_qdisc = False
        self._remove_qdisc = remove_qdisc
        try:
            if mode in ("auto", "tcx") and self._attach_tcx(program, required=mode == "tcx"):
                self.mode = "tcx"
            else:
                self._attach_tc(program)
                self.mode = "tc"
        except BaseException:
            self._lock.release()
            raise

    def _attach_tcx(self, program: Program, *, required: bool) -> bool:
        ffi, lib = self._ffi, self._lib
        on_egress = tcx_programs(self.ifindex)
        if any(name == program.program_name[:15] for _, name in on_egress):
            raise AttachConflictError(
                f"a TCX link of another {program.program_name} program is already on {self.name!r} egress; "
                "is a marker running in another mount namespace?"
            )
        unnamed = [str(prog_id) for prog_id, name in on_egress if name is None]
        if unnamed:
            log.warning("cannot tell whether TCX programs %s on %s egress include another marker: "
                        "reading a program's name needs CAP_SYS_ADMIN", ", ".join(unnamed), self.name)
        lib.fl_log_clear()
        link = lib.bpf_program__attach_tcx(program.bpf_program, self.ifindex, ffi.NULL)
        if link != ffi.NULL:
            self._link = link
            return True
        err = ffi.errno
        if err == errno.ENODEV:
            raise InterfaceError(f"network interface {self.name!r} disappeared while attaching")
        if required or err in (errno.EPERM, errno.EACCES):
            raise errno_error(f"attaching a TCX link to {self.name!r}", err)
        return False  # this kernel has no TCX: fall back to clsact

    def _attach_tc(self, program: Program) -> None:
        lib = self._lib
        created = lib.fl_tc_hook_create(self.ifindex)
        if created < 0:
            raise errno_error(f"creating the clsact qdisc on {self.name!r}", created)
        # The filter dump names the program at our handle and priority; reading a
        # program by its id instead would need CAP_SYS_ADMIN, which the unit does not grant.
        found = egress_filter_program(self.ifindex, TC_HANDLE, TC_PRIORITY)
        if found is not None and found != program.program_name[:15]:
            raise AttachConflictError(
                f"a filter of another program ({found or 'unnamed'}) sits at handle {TC_HANDLE:#x} "
                f"priority {TC_PRIORITY:#x} on {self.name!r} egress; remove it or use attach mode 'tcx'"
            )
        record = qdisc_record(self.name)
        if created == 1:
            record.write_text(f"{self.ifindex}\n")
            self.created_qdisc = True
        elif found is not None:
            self.created_qdisc = _recorded_qdisc(record, self.ifindex)  # a killed marker's, with its filter
        else:
            # Without a filter of ours on it, the qdisc is not a killed marker's: a record says
            # otherwise only when it outlived its namespace, whose inode number a new one reuses.
            self.created_qdisc = False
            record.unlink(missing_ok=True)
        # Under our lock, a filter of ours can only be left by a marker whose process died.
        err = lib.fl_tc_attach(self.ifindex, program.prog_fd, TC_HANDLE, TC_PRIORITY, int(found is not None))
        if err:
            raise errno_error(f"attaching a cls_bpf filter to {self.name!r}", err)

    def detach(self) -> None:
        """Leave the interface as it was found. Safe to call twice; a vanished interface is fine."""

        try:
            if self._link != self._ffi.NULL:
                self._lib.bpf_link__destroy(self._link)
                self._link = self._ffi.NULL
            elif self.mode == "tc":
                self.mode = "detached"
                remove_filter(self.name, self.ifindex)
                if self.created_qdisc and self._remove_qdisc and not clsact_has_filters(self.ifindex):
                    self._lib.fl_tc_hook_destroy(self.ifindex)
                qdisc_record(self.name).unlink(missing_ok=True)
        finally:
            self._lock.release()


def _recorded_qdisc(record: Path, ifindex: int) -> bool:
    """Whether ``record`` says that a marker created the qdisc of this very interface."""
    try:
        return record.read_text().strip() == str(ifindex)
    except OSError:
        return False


def remove_recorded_qdisc(ifname: str, ifindex: int, *, dry_run: bool = False) -> bool:
    """Remove the clsact qdisc on ``ifname`` if a marker recorded creating it and it holds no filter.

    True when it was (or, with ``dry_run``, would be) removed.
    """
    record = qdisc_record(ifname)
    if not _recorded_qdisc(record, ifindex) or clsact_has_filters(ifindex):
        return False
    if dry_run:
        return True
    err = extension()[1].fl_tc_hook_destroy(ifindex)
    if err and abs(err) not in (errno.ENOENT, errno.EINVAL):
        raise errno_error(f"removing the clsact qdisc of {ifname!r}", err)
    record.unlink(missing_ok=True)
    return True


def remove_filter(ifname: str, ifindex: int) -> None:
    """Remove the cls_bpf filter at flowlabel's handle and priority on ``ifname`` egress."""
    err = extension()[1].fl_tc_detach(ifindex, TC_HANDLE, TC_PRIORITY)
    if err and abs(err) not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
        raise errno_error(f"removing the filter on {ifname!r}", err)


def tcx_programs(ifindex: int) -> list[tuple[int, str | None]]:
    """(id, name) of the programs on an interface's TCX egress; [] on a kernel without TCX.

    A name is None where it cannot be read: that needs CAP_SYS_ADMIN.
    """
    ffi, lib = extension()
    ids = ffi.new("uint32_t[]", 64)
    count = ffi.new("uint32_t *", 64)
    err = lib.fl_tcx_progs(ifindex, ids, count)
    if err == -errno.EINVAL:
        return []  # no TCX on this kernel
    if err == -errno.ENODEV:
        raise InterfaceError(f"network interface {ifindex} does not exist")
    if err:
        raise errno_error(f"listing the TCX programs of interface {ifindex}", err)
    found: list[tuple[int, str | None]] = []
    name = ffi.new("char[]", 64)
    for i in range(count[0]):
        err = lib.fl_prog_name(ids[i], name, 64)
        if err in (-errno.EPERM, -errno.EACCES):
            found.append((int(ids[i]), None))
        elif err == 0:
            found.append((int(ids[i]), ffi.string(name).decode()))
        elif err != -errno.ENOENT:  # ENOENT: detached meanwhile
            raise errno_error(f"reading the name of program {ids[i]}", err)
    return found


def tcx_program_names(ifindex: int) -> list[str]:
    """Names of the programs on an interface's TCX egress (those that can be read)."""
    return [name for _, name in tcx_programs(ifindex) if name is not None]
