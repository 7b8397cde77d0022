"""The named-pipe source: line assembly however writes are cut, and the pipe's life cycle."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowlabel.events import FlowEvent
from flowlabel.flowtable import Change, FlowTable
from flowlabel.sources import pipe as pipe_module
from flowlabel.sources.pipe import LineAssembler, PipeSource

# -- LineAssembler --------------------------------------------------------------------------------


def feed_all(assembler: LineAssembler, chunks: Sequence[bytes]) -> list[bytes]:
    lines: list[bytes] = []
    for chunk in chunks:
        lines.extend(assembler.feed(chunk))
    return lines


def test_whole_lines() -> None:
    assert LineAssembler(100).feed(b"one\ntwo\n") == [b"one", b"two"]


def test_a_line_split_across_reads() -> None:
    a = LineAssembler(100)
    assert a.feed(b"sta") == []
    assert a.pending == b"sta"
    assert a.feed(b"rt tcp") == []
    assert a.feed(b" ...\nnext") == [b"start tcp ..."]
    assert a.pending == b"next"


def test_empty_chunk_and_empty_lines() -> None:
    a = LineAssembler(100)
    assert a.feed(b"") == []
    assert a.feed(b"\n\nx\n") == [b"", b"", b"x"]


def test_an_overlong_line_comes_back_cut_to_one_byte_over() -> None:
    a = LineAssembler(10)
    assert a.feed(b"0123456789ABCDEF\nok\n") == [b"0123456789A", b"ok"]


def test_an_overlong_partial_line_is_returned_once_and_its_rest_skipped() -> None:
    a = LineAssembler(10)
    assert a.feed(b"0123456789AB") == [b"0123456789A"]
    assert a.pending == b""
    assert a.feed(b"more and more") == []
    assert a.feed(b"still the same line") == []
    assert a.feed(b"end of it\nfine\n") == [b"fine"]


def test_a_partial_line_that_grows_too_long() -> None:
    a = LineAssembler(10)
    assert a.feed(b"01234") == []
    assert a.feed(b"56789") == []
    assert a.feed(b"X") == [b"0123456789X"]
    assert a.feed(b"\nok\n") == [b"ok"]


def test_a_line_of_exactly_the_limit_is_whole() -> None:
    assert LineAssembler(5).feed(b"12345\n") == [b"12345"]


def test_flush_returns_the_pending_line() -> None:
    a = LineAssembler(100)
    a.feed(b"done\nhalf")
    assert a.flush() == b"half"
    assert a.flush() == b""
    assert a.feed(b"new\n") == [b"new"]


def test_flush_ends_the_skipping_of_an_overlong_line() -> None:
    a = LineAssembler(10)
    assert a.feed(b"x" * 15) == [b"x" * 11]
    assert a.waiting
    assert a.flush() == b""
    assert not a.waiting
    assert a.feed(b"next\n") == [b"next"]  # no longer taken for the rest of the long one


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        LineAssembler(0)


@given(
    lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=30),
)
def test_any_chunking_gives_the_same_lines(lines: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    points = sorted({c for c in cuts if c < len(stream)})
    chunks = [stream[i:j] for i, j in zip([0, *points], [*points, len(stream)])]
    limit = 25
    expected = [line if len(line) <= limit else line[: limit + 1] for line in lines]
    assert feed_all(LineAssembler(limit), chunks) == expected


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_memory_stays_bounded(data: bytes, limit: int) -> None:
    a = LineAssembler(limit)
    for i in range(0, len(data), 7):
        for line in a.feed(data[i : i + 7]):
            assert len(line) <= limit + 1
        assert len(a.pending) <= limit


# -- PipeSource -------------------------------------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.table = FlowTable()
        self.events: list[FlowEvent] = []
        self.batches = 0
        self.rejected: list[str] = []

    def submit(self, events: Sequence[FlowEvent], source: str) -> list[Change]:
        self.batches += 1
        self.events.extend(events)
        return [self.table.apply(e, source) for e in events]

    def reject(self, source: str, reason: str) -> None:
        self.rejected.append(reason)


LINE = "start tcp 2001:db8::1 {} 2001:db8::2 5777 2 15\n"


async def settle(sink: Sink, count: int, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(sink.events) + len(sink.rejected) < count and loop.time() < deadline:
        await asyncio.sleep(0.005)


def write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def test_pipe_is_created_0660_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "run" / "np"

    async def main() -> None:
        source = PipeSource(str(path), Sink())
        old = os.umask(0o077)
        try:
            await source.start()
        finally:
            os.umask(old)
        st_ = os.stat(path)
        assert stat.S_ISFIFO(st_.st_mode)
        assert stat.S_IMODE(st_.st_mode) == 0o660
        await source.stop()
        assert not path.exists()

    asyncio.run(main())


def test_a_stale_pipe_is_replaced_but_a_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "np"
    os.mkfifo(fifo)
    regular = tmp_path / "file"
    regular.write_text("keep me")

    async def main() -> None:
        source = PipeSource(str(fifo), Sink())
        await source.start()
        await source.stop()
        with pytest.raises(OSError, match="not a named pipe"):
            await PipeSource(str(regular), Sink()).start()

    asyncio.run(main())
    assert regular.read_text() == "keep me"


def test_lines_from_writers_that_come_and_go(tmp_path: Path) -> None:
    path = tmp_path / "np"
    sink = Sink()

    async def main() -> None:
        source = PipeSource(str(path), sink)
        await source.start()
        loop = asyncio.get_running_loop()
        for port in range(1, 6):
            # Each writer opens, writes and closes: the reader must not see EOF.
            await loop.run_in_executor(None, write, path, LINE.format(port).encode())
        await settle(sink, 5)
        await source.stop()

    asyncio.run(main())
    assert [e.sport for e in sink.events] == [1, 2, 3, 4, 5]
    assert sink.rejected == []


def test_a_line_split_over_writes_and_writers(tmp_path: Path) -> None:
    path = tmp_path / "np"
    sink = Sink()
    line = LINE.format(4242).encode()

    async def main() -> None:
        source = PipeSource(str(path), sink)
        await source.start()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, write, path, line[:10])
        await asyncio.sleep(0.05)
        await loop.run_in_executor(None, write, path, line[10:30])
        await asyncio.sleep(0.05)
        await loop.run_in_executor(None, write, path, line[30:])
        await settle(sink, 1)
        await source.stop()

    asyncio.run(main())
    assert [e.sport for e in sink.events] == [4242]


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "np"
    sink = Sink()
    writers, per_writer = 8, 500

    def writer(n: int) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            for i in range(per_writer):
                os.write(fd, LINE.format(n * per_writer + i + 1).encode())
        finally:
            os.close(fd)

    async def main() -> None:
        source = PipeSource(str(path), sink)
        await source.start()
        threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            await asyncio.sleep(0.01)
        await settle(sink, writers * per_writer)
        await source.stop()

    asyncio.run(main())
    assert sorted(e.sport for e in sink.events) == list(range(1, writers * per_writer + 1))
    assert sink.rejected == []
    assert sink.batches < writers * per_writer  # read in chunks, applied in batches


def test_bad_and_overlong_lines_are_rejected_and_the_rest_applied(tmp_path: Path) -> None:
    path = tmp_path / "np"
    sink = Sink()
    data = (
        LINE.format(1)
        + "garbage\n"
        + "\n"
        + LINE.format(2)
        + "start tcp 2001:db8::1 99999 2001:db8::2 5777 2 15\n"
        + "x" * 300 + "\n"
        + LINE.format(3)
    ).encode()

    async def main() -> None:
        source = PipeSource(str(path), sink, max_line=100)
        await source.start()
        await asyncio.get_running_loop().run_in_executor(None, write, path, data)
        await settle(sink, 6)
        await source.stop()

    asyncio.run(main())
    assert [e.sport for e in sink.events] == [1, 2, 3]
    assert len(sink.rejected) == 3
    assert "expected 8 fields" in sink.rejected[0] and "'garbage'" in sink.rejected[0]
    assert "src_port" in sink.rejected[1] and "99999" in sink.rejected[1]
    assert sink.rejected[2].startswith("line longer than 100 bytes: 'xxxx")


def test_a_line_without_newline_is_taken_after_a_pause(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipe_module, "PARTIAL_LINE_TIMEOUT", 0.1)
    path = tmp_path / "np"
    sink = Sink()

    async def main() -> None:
        source = PipeSource(str(path), sink)
        await source.start()
        await asyncio.get_running_loop().run_in_executor(None, write, path, LINE.format(7).strip().encode())
        await asyncio.sleep(0.05)
        assert sink.events == []
        await settle(sink, 1)
        await source.stop()

    asyncio.run(main())
    assert [e.sport for e in sink.events] == [7]


def test_stop_applies_what_is_still_in_the_pipe(tmp_path: Path) -> None:
    path = tmp_path / "np"
    sink = Sink()

    async def main() -> None:
        source = PipeSource(str(path), sink)
        await source.start()
        # Written without giving the loop a chance to read.
        write(path, (LINE.format(1) + LINE.format(2).strip()).encode())
        await source.stop()

    asyncio.run(main())
    assert [e.sport for e in sink.events] == [1, 2]


def test_names_need_and_use_the_registry(tmp_path: Path) -> None:
    from flowlabel.registry import Registry

    path = tmp_path / "np"
    sink = Sink()

    async def main() -> None:
        source = PipeSource(str(path), sink, registry=Registry.bundled())
        await source.start()
        write(path, b"start tcp 2001:db8::1 1 2001:db8::2 2 atlas Production-Input\n")
        await settle(sink, 1)
        await source.stop()

    asyncio.run(main())
    assert [(e.experiment, e.activity) for e in sink.events] == [
        Registry.bundled().resolve("atlas", "Production Input")
    ]


def test_after_an_unfinished_overlong_line_the_next_line_is_kept(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipe_module, "PARTIAL_LINE_TIMEOUT", 0.1)
    path = tmp_path / "np"
    sink = Sink()

    async def main() -> None:
        source = PipeSource(str(path), sink, max_line=100)
        await source.start()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, write, path, b"x" * 150)  # no newline, and its writer goes
        await settle(sink, 1)
        await asyncio.sleep(0.3)  # the pause after which an unfinished line is given up
        await loop.run_in_executor(None, write, path, LINE.format(8).encode())
        await settle(sink, 2)
        await source.stop()

    asyncio.run(main())
    assert len(sink.rejected) == 1 and "x" * 20 in sink.rejected[0]
    assert [e.sport for e in sink.events] == [8]
