"""Tests for flowlabel.label: the SciTags flow label layout and scitag integers."""

from __future__ import annotations

import enum
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowlabel import label
from flowlabel.label import Label, LabelError, decode, encode, from_scitag, scitag

experiments = st.integers(0, label.EXPERIMENT_MAX)
activities = st.integers(0, label.ACTIVITY_MAX)
entropies = st.integers(0, label.ENTROPY_MAX)


def reference_encode(experiment: int, activity: int, entropy: int) -> int:
    """The layout written out bit by bit, independent of the module's table."""
    bits = [0] * 20  # bits[i] is label bit i
    bits[19] = entropy >> 4 & 1
    bits[18] = entropy >> 3 & 1
    for k in range(9):
        bits[17 - k] = experiment >> k & 1
    bits[8] = entropy >> 2 & 1
    for k in range(6):
        bits[2 + k] = activity >> k & 1
    bits[1] = entropy >> 1 & 1
    bits[0] = entropy & 1
    return sum(bit << i for i, bit in enumerate(bits))


def test_known_vector() -> None:
    assert encode(2, 15, entropy=0) == 0x1003C
    assert decode(0x1003C) == Label(2, 15, 0)


def test_round_trip_every_pair_with_random_entropy() -> None:
    rng = random.Random(20240328)
    for experiment in range(label.EXPERIMENT_MAX + 1):
        for activity in range(label.ACTIVITY_MAX + 1):
            entropy = rng.randrange(32)
            value = encode(experiment, activity, entropy)
            assert 0 <= value <= label.LABEL_MAX
            assert decode(value) == (experiment, activity, entropy)


@pytest.mark.parametrize(("experiment", "activity"), [(0, 0), (2, 15), (511, 63), (300, 1), (1, 62)])
def test_round_trip_every_entropy(experiment: int, activity: int) -> None:
    values = {encode(experiment, activity, entropy) for entropy in range(32)}
    assert len(values) == 32
    for entropy in range(32):
        assert decode(encode(experiment, activity, entropy)) == (experiment, activity, entropy)


def test_every_label_decodes_and_encodes_back() -> None:
    # decode is a bijection from the 2**20 labels onto the valid triples.
    for value in range(label.LABEL_MAX + 1):
        assert encode(*decode(value)) == value


@given(experiments, activities, entropies)
def test_matches_bitwise_reference(experiment: int, activity: int, entropy: int) -> None:
    assert encode(experiment, activity, entropy) == reference_encode(experiment, activity, entropy)


def test_experiment_is_bit_reversed() -> None:
    for k in range(9):
        assert encode(1 << k, 0, 0) == 1 << (17 - k)


def test_activity_is_not_reversed() -> None:
    for k in range(6):
        assert encode(0, 1 << k, 0) == 1 << (2 + k)


@pytest.mark.parametrize(("entropy_bit", "label_bit"), [(4, 19), (3, 18), (2, 8), (1, 1), (0, 0)])
def test_entropy_bit_positions(entropy_bit: int, label_bit: int) -> None:
    assert encode(0, 0, 1 << entropy_bit) == 1 << label_bit


def test_random_entropy_uses_all_values_and_keeps_ids() -> None:
    seen = set()
    for _ in range(3000):
        decoded = decode(encode(2, 15))
        assert decoded[:2] == (2, 15)
        seen.add(decoded.entropy)
    assert seen == set(range(32))


def test_scitag_every_pair() -> None:
    for experiment in range(label.EXPERIMENT_MAX + 1):
        for activity in range(label.ACTIVITY_MAX + 1):
            value = scitag(experiment, activity)
            assert value == experiment << 6 | activity
            assert from_scitag(value) == (experiment, activity)


def test_scitag_examples() -> None:
    assert scitag(2, 15) == 143
    assert from_scitag(143) == (2, 15)
    assert from_scitag(label.SCITAG_MAX) == (511, 63)


BAD_INTEGERS = [-1, True, False, 1.0, 2.5, "2", b"2", None, [2], 10**30, -(10**30)]


@pytest.mark.parametrize("value", [*BAD_INTEGERS, 512, 1 << 9])
def test_encode_rejects_bad_experiment(value: object) -> None:
    with pytest.raises(LabelError, match="experiment ID must be an integer 0-511") as info:
        encode(value, 1, 0)  # type: ignore[arg-type]
    assert "got" in str(info.value)


@pytest.mark.parametrize("value", [*BAD_INTEGERS, 64, 1 << 6])
def test_encode_rejects_bad_activity(value: object) -> None:
    with pytest.raises(LabelError, match="activity ID must be an integer 0-63"):
        encode(1, value, 0)  # type: ignore[arg-type]


# None is not bad entropy: it asks for fresh random bits.
@pytest.mark.parametrize("value", [*(v for v in BAD_INTEGERS if v is not None), 32])
def test_encode_rejects_bad_entropy(value: object) -> None:
    with pytest.raises(LabelError, match="entropy must be an integer 0-31"):
        encode(1, 1, value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [*BAD_INTEGERS, 0x100000])
def test_decode_rejects_bad_label(value: object) -> None:
    with pytest.raises(LabelError, match="flow label must be an integer 0-1048575"):
        decode(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [*BAD_INTEGERS, 1 << 15])
def test_from_scitag_rejects_bad_value(value: object) -> None:
    with pytest.raises(LabelError, match="scitag must be an integer 0-32767"):
        from_scitag(value)  # type: ignore[arg-type]


def test_scitag_rejects_out_of_range() -> None:
    with pytest.raises(LabelError, match="512"):
        scitag(512, 0)
    with pytest.raises(LabelError, match="64"):
        scitag(0, 64)


def test_error_message_names_the_value() -> None:
    with pytest.raises(LabelError) as info:
        encode(600, 1, 0)
    assert str(info.value) == "experiment ID must be an integer 0-511, got 600"
    with pytest.raises(LabelError) as info:
        encode(True, 1, 0)
    assert str(info.value) == "experiment ID must be an integer 0-511, got True (bool)"
    with pytest.raises(LabelError) as info:
        encode(10**5000, 1, 0)
    assert "16610-bit integer" in str(info.value)


def test_label_error_is_a_value_error() -> None:
    assert issubclass(LabelError, ValueError)


class Experiment(enum.IntEnum):
    ATLAS = 2


def test_int_subclasses_are_accepted_as_plain_ints() -> None:
    value = encode(Experiment.ATLAS, 15, 0)
    assert value == 0x1003C
    assert type(label.check_experiment(Experiment.ATLAS)) is int
