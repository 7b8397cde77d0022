"""The members the extension's ongoing round writes (csrc/ongoing.c, from enrichment.program) are
the text json.dumps writes for enrichment.members, for any tcp_info, of any kernel's size."""

from __future__ import annotations

import errno
import json
import socket
import struct
from functools import cache

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowlabel import enrichment, tcpinfo
from flowlabel.ongoing import OngoingRound, address_of, sockaddr

_NAMES = [name for name, _ in tcpinfo.TCP_INFO_FIELDS]
_CODES = dict(tcpinfo.TCP_INFO_FIELDS)
#: Values that the compatible shape treats specially (rto 3 s, ssthresh "infinite"), and the widest.
_SPECIAL = [0, 1, 3_000_000, 0xFFFF, 0xFFFFFFFF]


@cache
def round_for(mode: str, size: int) -> OngoingRound:
    return OngoingRound(mode, [], info_size=size)


@st.composite
def tcp_infos(draw: st.DrawFn) -> bytes:
    """A tcp_info as a kernel writes it: its first 8 bytes, then a prefix of the fields (older
    kernels write fewer)."""
    info = bytearray(draw(st.binary(min_size=8, max_size=8)))
    for name in _NAMES[: draw(st.integers(25, len(_NAMES)))]:
        top = (1 << (64 if _CODES[name] == "Q" else 32)) - 1
        value = draw(st.sampled_from([v for v in _SPECIAL if v <= top]) | st.integers(0, top))
        info += struct.pack("=" + _CODES[name], value)
    return bytes(info)


@given(tcp_infos(), st.sampled_from(["lean", "compatible", ""]),
       st.sampled_from([None, "", "cubic", "bbr", 'we"ird', "back\\slash"]))
def test_the_round_writes_what_json_dumps_writes(info: bytes, mode: str, cong: str | None) -> None:
    fields = tcpinfo.info_dict(info, 0, len(info))
    fields["cong"] = cong
    expected = json.dumps(enrichment.members(fields, mode), separators=(",", ":"))[1:-1]
    assert round_for(mode, len(info)).members(info, cong) == expected


def test_a_tcp_info_shorter_than_the_program_reads_is_refused() -> None:
    with pytest.raises(OSError, match="Invalid argument"):
        round_for("lean", 200).members(bytes(120), "cubic")


def test_a_tcp_info_size_beyond_the_rounds_room_is_refused() -> None:
    with pytest.raises(OSError, match="Invalid argument"):
        OngoingRound("lean", [], info_size=4096)


@pytest.mark.parametrize(("kind", "arg", "offset"), [
    ("u64", 0, 100 - 7),  # reads past the 100 bytes of tcp_info
    ("u32", 0, 97),
    ("table", 1, 0),  # one table only
    ("bit", 8, 7),  # a byte has bits 0-7
    (None, 0, 0),  # no such kind
])
def test_a_program_field_outside_the_tcp_info_or_the_tables_is_refused(kind: str | None, arg: int,
                                                                     offset: int) -> None:
    from flowlabel.bpf.ext import extension

    ffi, lib = extension()
    round_ = OngoingRound("lean", [], info_size=100)
    fields = ffi.new("struct fl_field[]", 2)
    fields[0].kind, fields[0].offset = lib.FL_U8, 99  # the last byte: fine
    fields[1].kind = lib.FL_CONG + 1 if kind is None else getattr(lib, "FL_" + kind.upper())
    fields[1].arg, fields[1].offset = arg, offset
    tables = bytes(256 * lib.FL_TABLE_TEXT)
    assert lib.fl_ongoing_program(round_._handle, b"\x04\x04", 2, fields, 1, tables, 1, 100) == 0
    assert lib.fl_ongoing_program(round_._handle, b"\x04\x04", 2, fields, 2, tables, 1, 100) == -errno.EINVAL


def test_text_that_does_not_fit_is_refused_and_nothing_written_past_the_buffer() -> None:
    from flowlabel.bpf.ext import extension

    ffi, lib = extension()
    round_ = round_for("lean", tcpinfo.info_size())
    info = bytes(tcpinfo.info_size())
    for size in (1, 3, 40, 200):
        out = ffi.new("char[]", size + 64)
        ffi.buffer(out)[:] = b"\xaa" * (size + 64)
        assert lib.fl_ongoing_members(round_._handle, info, len(info), b"cubic", out, size) == -errno.EMSGSIZE
        assert ffi.buffer(out)[size:] == b"\xaa" * 64  # the guard after the buffer is untouched


@pytest.mark.parametrize("target", [(socket.AF_INET6, ("2001:db8::1", 10514)),
                                    (socket.AF_INET, ("192.0.2.1", 1)),
                                    (socket.AF_INET6, ("::ffff:192.0.2.1", 65535))])
def test_a_socket_address_reads_back_as_written(target: tuple[int, tuple[str, int]]) -> None:
    packed = sockaddr(target)
    assert len(packed) == (28 if target[0] == socket.AF_INET6 else 16)
    assert address_of(packed) == target[1]
