"""Fuzzing the three event parsers: only EventError may escape, whatever arrives."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from event_samples import API_SAMPLE, FUZZ, PIPE_SAMPLES, SAMPLES, api, json_part
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from flowlabel.events import EventError, FlowEvent, parse_api, parse_firefly, parse_line
from flowlabel.registry import Registry

# -- fuzzing: only EventError may escape ------------------------------------------------------------

JSON_ODDITIES: list[object] = [
    None, True, False, 0, -1, 1, 1.5, 1e308, 2**63, "", "x", "start", "END", "tcp", "ipv4", "ipv6",
    "::1", "192.0.2.1", "fe80::1%eth0", "2024-03-28T08:58:48Z", "2024-13-40T25:61:61Z", [], {}, [1, "a"],
    {"a": {"b": None}}, 65535, 65536, 511, 512, 63, 64, "\ud800", "\x00",
]  # fmt: skip
TOKENS = [
    b"\x00", b"\xff", b"\xc3\x28", b"\xe2\x80\xa8", b" ", b"\t", b"\n", b'"', b"\\", b"{", b"}", b"[", b"]",
    b":", b",", b"-", b"0", b"9" * 30, b"1e999", b"null", b"true", b"NaN", b"%eth0", b"::", b".", b"<134>1 ",
    b"[" * 50, b"\xef\xbb\xbf", "\u0663".encode(), b"START", b"end", b"udp", b"65536", b"512",
]  # fmt: skip


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """Damage ``data`` in one to four random ways."""
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        i = rng.randrange(len(buf) + 1)
        j = min(len(buf), i + rng.randrange(1, 12))
        op = rng.randrange(8)
        if op == 0:
            del buf[i:j]
        elif op == 1:
            buf[i:i] = rng.choice(TOKENS)
        elif op == 2 and i < len(buf):
            buf[i] = rng.randrange(256)
        elif op == 3:
            buf[i:i] = buf[i:j] * rng.randrange(1, 4)
        elif op == 4:
            del buf[i:]
        elif op == 5:
            k = rng.randrange(len(buf) + 1)
            buf[i:j], buf[k:k] = b"", buf[i:j]
        elif op == 6:
            buf[i:j] = bytes(buf[i:j]).swapcase()
        else:
            buf[i:j] = rng.choice(TOKENS)
    return bytes(buf)


def json_paths(doc: object, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from json_paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from json_paths(value, (*prefix, index))


def mutate_json(rng: random.Random, doc: Any) -> Any:
    """Change, drop or add one member somewhere in ``doc`` (a deep copy)."""
    doc = copy.deepcopy(doc)
    path = rng.choice([p for p in json_paths(doc) if p])
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    op = rng.randrange(4)
    if op == 0:
        del parent[path[-1]]
    elif op == 1 and isinstance(parent, dict):
        parent[rng.choice(["extra", "state", "src-ip", "afi", "src_ip", "Version"])] = rng.choice(
            JSON_ODDITIES
        )
    else:
        parent[path[-1]] = copy.deepcopy(rng.choice(JSON_ODDITIES))
    return doc


def only_event_errors(parse: Callable[[Any], FlowEvent], data: Any) -> None:
    try:
        event = parse(data)
    except EventError as exc:
        # The field may be empty: an API object can have "" as an unknown key.
        assert isinstance(exc.field, str)
        assert isinstance(exc.reason, str) and exc.reason
        str(exc)
    else:
        # Whatever a parser accepts is a valid event.
        assert isinstance(event, FlowEvent)
        assert event.validate() == event


FIREFLY_SEEDS = [s.encode() for s, _ in SAMPLES.values()]
PIPE_SEEDS = [line.encode() for line in PIPE_SAMPLES] + [b"start tcp ::1 1 ::2 2 atlas Production-Input"]
API_SEEDS = [json.dumps(API_SAMPLE).encode(), json.dumps(api()).encode()]


def fuzz_inputs(seeds: list[bytes]) -> st.SearchStrategy[Any]:
    """Arbitrary bytes and text, and valid messages damaged at random."""
    damaged = st.builds(mutate_bytes, st.randoms(use_true_random=False), st.sampled_from(seeds))
    return st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300),
        damaged,
        damaged.map(lambda b: b.decode("utf-8", "replace")),
    )


def fuzz_json(seeds: list[bytes]) -> st.SearchStrategy[Any]:
    """Valid messages with one member changed, dropped or added."""

    def build(rng: random.Random, seed: bytes) -> str:
        text = seed.decode()
        head, brace, body = text.partition("{")
        return head + json.dumps(mutate_json(rng, json.loads(brace + body)))

    return st.builds(build, st.randoms(use_true_random=False), st.sampled_from(seeds))


@FUZZ
@given(fuzz_inputs(PIPE_SEEDS))
def test_fuzz_parse_line(data: Any) -> None:
    only_event_errors(parse_line, data)


@settings(FUZZ, max_examples=2000)
@given(fuzz_inputs(PIPE_SEEDS))
def test_fuzz_parse_line_with_registry(registry: Registry, data: Any) -> None:
    only_event_errors(lambda d: parse_line(d, registry), data)


@FUZZ
@given(st.one_of(fuzz_inputs(FIREFLY_SEEDS), fuzz_json(FIREFLY_SEEDS)))
def test_fuzz_parse_firefly(data: Any) -> None:
    only_event_errors(parse_firefly, data)


@FUZZ
@given(st.one_of(fuzz_inputs(API_SEEDS), fuzz_json(API_SEEDS)))
def test_fuzz_parse_api(registry: Registry, data: Any) -> None:
    only_event_errors(lambda d: parse_api(d, registry), data)


@pytest.mark.parametrize(
    ("parse", "seeds"),
    [
        (parse_line, PIPE_SEEDS),
        (parse_firefly, FIREFLY_SEEDS),
        (parse_api, API_SEEDS),
    ],
    ids=["pipe", "firefly", "api"],
)
def test_fuzz_mutations_seeded(parse: Callable[[Any], FlowEvent], seeds: list[bytes]) -> None:
    # A fixed-seed sweep, cheaper per input than hypothesis, over many more mutations.
    rng = random.Random(1234)
    for _ in range(20_000):
        data = mutate_bytes(rng, rng.choice(seeds))
        only_event_errors(parse, data if rng.random() < 0.5 else data.decode("utf-8", "replace"))


# Most mutations break the schema and are filtered out (about four in five): expected, not a bad strategy.
@settings(max_examples=2000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(fuzz_json(FIREFLY_SEEDS))
def test_schema_valid_fireflies_are_accepted(schema_validator: Any, message: str) -> None:
    """Whatever the published schema accepts parses, except IDs too large for the flow label."""
    doc = json.loads(json_part(message))
    # Zone indices ("fe80::1%eth0") pass the schema's format check; flowlabel refuses them.
    assume(schema_validator.is_valid(doc) and "%" not in json.dumps(doc.get("flow-id")))
    try:
        parse_firefly(message)
    except EventError as exc:
        assert exc.field in ("context.experiment-id", "context.activity-id"), str(exc)
