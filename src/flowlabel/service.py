"""What a service manager sees of the daemon: its PID file and systemd's readiness notifications."""

from __future__ import annotations

import contextlib
import logging
import os
import socket

__all__ = ["PidFile", "StartupError", "notify_systemd"]

log = logging.getLogger("flowlabel")


class StartupError(Exception):
    """The daemon cannot start; the message says why."""


def notify_systemd(state: str) -> None:
    """Tell systemd about ``state`` (e.g. ``READY=1``) when it runs us with Type=notify."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", state, exc)


class PidFile:
    """The PID file: refuses to start a second daemon, removed at exit."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._written = False

    def _running(self) -> int | None:
        try:
            with open(self.path) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        if pid == os.getpid():
            return None
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            return None  # gone
        # A recycled PID belongs to some other program.
        return pid if b"flowlabel" in cmdline else None

    def write(self) -> None:
        pid = self._running()
        if pid is not None:
            raise StartupError(f"flowlabel is already running as process {pid} (PID file {self.path})")
        directory = os.path.dirname(self.path)
        try:
            if directory:
                os.makedirs(directory, mode=0o755, exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(f"{os.getpid()}\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            raise StartupError(f"cannot write the PID file {self.path}: {exc.strerror}") from None
        self._written = True

    def remove(self) -> None:
        if self._written:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self._written = False
