"""Flow events as lines written to a named pipe (the flowd format).

The pipe is created when the source starts (mode 0660) and removed when it
stops. It is opened read-write and non-blocking: holding a write end means the
reader never sees end-of-file when the last writer goes away, so there is no
reopening and no window in which a writer could find no reader.

Writers may split a line over several writes, and many writers may write at
once; a line is taken when its newline arrives (a write of up to ``PIPE_BUF``,
4096 bytes, reaches the pipe in one piece, so whole-line writes never mix). A
partial line that sees no more data for :data:`PARTIAL_LINE_TIMEOUT` seconds is
taken as it is: ``printf 'start ...' > pipe`` works as it does with flowd-go,
which reads until the writer closes.

Every :data:`PIPE_CHECK_INTERVAL` seconds the source checks that the path
still names the pipe it reads. A pipe removed from under the daemon (a clean-up
of ``/var/run``, an operator's ``rm``) is created again with the same mode and
group, and a named pipe put in its place by someone else is read instead; what
the old pipe still held is applied first. Anything else at the path is logged
and left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import stat

from .._text import show
from ..events import EventError, FlowEvent, parse_line
from ..registry import Registry
from . import EventSink

__all__ = ["PARTIAL_LINE_TIMEOUT", "PIPE_CHECK_INTERVAL", "LineAssembler", "PipeSource"]

log = logging.getLogger(__name__)

SOURCE = "pipe"
PARTIAL_LINE_TIMEOUT = 1.0
#: Seconds between checks that the path still names the pipe being read.
PIPE_CHECK_INTERVAL = 2.0
# One read per wake-up, about a thousand lines: then the other sources get their turn.
READ_SIZE = 1 << 16
# A larger pipe absorbs bursts while the loop is busy; 1 MiB is the default
# limit for unprivileged processes (/proc/sys/fs/pipe-max-size).
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class LineAssembler:
    """Cuts a byte stream into lines, however the stream is chunked.

    ``feed`` returns the lines completed by a chunk, without their newline.
    A line longer than ``max_line`` bytes comes back cut to ``max_line + 1``
    bytes, so the caller can reject it by its length and still show how it
    starts; the assembler never holds more than ``max_line + 1`` bytes of a
    line, whatever the writer sends.
    """

    def __init__(self, max_line: int) -> None:
        if max_line < 1:
            raise ValueError(f"max_line must be positive, not {max_line}")
        self.max_line = max_line
        self._partial = b""
        # True while skipping the rest of an overlong line that was already returned.
        self._skipping = False

    @property
    def pending(self) -> bytes:
        """The start of a line that has no newline yet."""
        return self._partial

    @property
    def waiting(self) -> bool:
        """A line is unfinished: one pending, or the rest of an overlong one being skipped."""
        return bool(self._partial) or self._skipping

    def feed(self, chunk: bytes) -> list[bytes]:
        if not chunk:
            return []
        start = 0
        if self._skipping:
            newline = chunk.find(b"\n")
            if newline < 0:
                return []
            self._skipping = False
            start = newline + 1
        last = chunk.rfind(b"\n")
        if last < start:
            pending: list[bytes] = []
            self._keep(chunk[start:] if start else chunk, pending)
            return pending
        lines = chunk[start:last].split(b"\n")
        if self._partial:
            lines[0] = self._partial + lines[0]
            self._partial = b""
        limit = self.max_line
        for i, line in enumerate(lines):
            if len(line) > limit:
                lines[i] = line[: limit + 1]
        self._keep(chunk[last + 1 :], lines)
        return lines

    def _keep(self, tail: bytes, lines: list[bytes]) -> None:
        """Hold ``tail`` as the partial line; an overlong one goes to ``lines`` at once."""
        partial = self._partial + tail if self._partial else tail
        if len(partial) > self.max_line:
            lines.append(partial[: self.max_line + 1])
            self._partial = b""
            self._skipping = True
        else:
            self._partial = partial

    def flush(self) -> bytes:
        """Give up waiting for the pending line's newline: return it and start afresh.

        An overlong line being skipped ends here too: the next newline may be another
        writer's, whose line must not be skipped with it."""
        partial, self._partial = self._partial, b""
        self._skipping = False
        return partial


class PipeSource:
    """Reads flow events from the named pipe at ``path``."""

    def __init__(
        self,
        path: str,
        sink: EventSink,
        *,
        max_line: int = 1000,
        registry: Registry | None = None,
        mode: int = 0o660,
    ) -> None:
        self.path = path
        self._sink = sink
        self._registry = registry
        self._mode = mode
        self._assembler = LineAssembler(max_line)
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._check_timer: asyncio.TimerHandle | None = None
        self._created = False
        self._misplaced: tuple[int, int] | None = None  # what sits at the path instead, once logged

    async def start(self) -> None:
        self._create()
        self._fd = self._open()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._readable)
        self._check_timer = self._loop.call_later(PIPE_CHECK_INTERVAL, self._check_path)

    def _open(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        # The default size works too, only with less slack.
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
        return fd

    def _ours(self, st: os.stat_result) -> bool:
        own = os.fstat(self._fd)
        return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)

    def _check_path(self) -> None:
        """Keep the path naming the pipe that is read (see the module's description)."""
        assert self._loop is not None
        self._check_timer = self._loop.call_later(PIPE_CHECK_INTERVAL, self._check_path)
        try:
            st: os.stat_result | None = os.lstat(self.path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            log.warning("cannot check the pipe %s: %s", self.path, exc.strerror)
            return
        if st is not None and self._ours(st):
            self._misplaced = None
            return
        try:
            if st is None:
                group = os.fstat(self._fd).st_gid
                self._create()
                if os.stat(self.path).st_gid != group:
                    os.chown(self.path, -1, group)
                log.warning("the pipe %s was removed; created it again (mode %04o)", self.path, self._mode)
            elif stat.S_ISFIFO(st.st_mode):
                self._created = False  # someone else's: theirs to remove
                log.warning("the pipe %s was replaced by another named pipe; reading that one", self.path)
            else:
                if self._misplaced != (st.st_dev, st.st_ino):
                    self._misplaced = (st.st_dev, st.st_ino)
                    log.error("%s is no longer a named pipe: no events arrive through it until it is "
                              "removed (the daemon then creates the pipe again)", self.path)
                return
            fd = self._open()
        except OSError as exc:
            log.error("cannot create the pipe %s again: %s", self.path, exc)
            return
        self._switch(fd)

    def _switch(self, fd: int) -> None:
        """Read from ``fd`` from now on, after applying what the old pipe still holds."""
        assert self._loop is not None
        self._loop.remove_reader(self._fd)
        while self._read():
            pass
        os.close(self._fd)
        self._fd = fd
        self._loop.add_reader(fd, self._readable)

    def _create(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISFIFO(st.st_mode):
                raise OSError(errno.EEXIST, f"{self.path} exists and is not a named pipe")
            # Left behind by a daemon that did not stop cleanly.
            os.unlink(self.path)
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        # Private until chmod: no writer can open it before its mode is right.
        os.mkfifo(self.path, 0o600)
        self._created = True
        # mkfifo's mode is filtered by the umask; chmod sets it exactly.
        os.chmod(self.path, self._mode)

    async def stop(self) -> None:
        """Stop reading, apply what is buffered, remove the pipe."""
        if self._check_timer is not None:
            self._check_timer.cancel()
            self._check_timer = None
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._fd >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self._fd)
            while self._read():
                pass
            tail = self._assembler.flush()
            if tail:
                self._handle([tail])
            try:
                # Whatever stands at the path now is not ours to remove.
                ours = self._ours(os.lstat(self.path))
            except FileNotFoundError:
                ours = False
            os.close(self._fd)
            self._fd = -1
            if self._created and ours:
                os.unlink(self.path)
        self._created = False

    def _readable(self) -> None:
        self._read()
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._assembler.waiting and self._loop is not None:
            self._flush_timer = self._loop.call_later(PARTIAL_LINE_TIMEOUT, self._flush_partial)

    def _read(self) -> bool:
        """Read and apply one chunk; False when the pipe is empty."""
        try:
            chunk = os.read(self._fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        lines = self._assembler.feed(chunk)
        if lines:
            self._handle(lines)
        return len(chunk) == READ_SIZE

    def _flush_partial(self) -> None:
        self._flush_timer = None
        tail = self._assembler.flush()
        if tail:
            self._handle([tail])

    def _handle(self, lines: list[bytes]) -> None:
        events: list[FlowEvent] = []
        limit = self._assembler.max_line
        registry = self._registry
        for line in lines:
            if len(line) > limit:
                self._sink.reject(SOURCE, f"line longer than {limit} bytes: {show(line)}")
                continue
            try:
                events.append(parse_line(line, registry))
            except EventError as exc:
                if not line.strip():
                    continue  # blank lines are harmless
                message = str(exc)
                shown = show(line)
                # Some messages already quote the line.
                where = "" if shown[1:41] in message else f" in line {shown}"
                self._sink.reject(SOURCE, f"{message}{where}")
        if events:
            self._sink.submit(events, SOURCE)
