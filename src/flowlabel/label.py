"""The SciTags IPv6 flow label and the scitag integer.

A flow label is 20 bits wide. SciTags lays it out as follows (bit 19 is the most
significant)::

    bits 19-18  two entropy bits
    bits 17-9   experiment ID, 9 bits, bit-reversed (experiment bit 0 -> label bit 17)
    bit  8      one entropy bit
    bits 7-2    activity ID, 6 bits, in natural order
    bits 1-0    two entropy bits

The five entropy bits keep labels of different flows of the same experiment and
activity apart, which helps ECMP hashing. They are chosen once per flow and kept
for its lifetime. This module handles them as one 5-bit integer ``entropy``
whose bits fill the label's random bits from the most significant down::

    entropy bit 4 -> label bit 19
    entropy bit 3 -> label bit 18
    entropy bit 2 -> label bit 8
    entropy bit 1 -> label bit 1
    entropy bit 0 -> label bit 0

A *scitag* is the compact integer that FTS, gfal2, xrdcp and the ``SciTag:``
HTTP header carry: ``experiment << 6 | activity``.

Values are never masked into range: anything out of range, or not an ``int``
(``bool`` included), raises :class:`LabelError`.
"""

from __future__ import annotations

import secrets
from typing import NamedTuple

from ._text import show

__all__ = [
    "ACTIVITY_MAX",
    "ENTROPY_MAX",
    "EXPERIMENT_MAX",
    "LABEL_MAX",
    "SCITAG_MAX",
    "Label",
    "LabelError",
    "check_activity",
    "check_entropy",
    "check_experiment",
    "decode",
    "encode",
    "from_scitag",
    "scitag",
]

EXPERIMENT_MAX = 0x1FF  # 9 bits
ACTIVITY_MAX = 0x3F  # 6 bits
ENTROPY_MAX = 0x1F  # 5 bits
LABEL_MAX = 0xFFFFF  # 20 bits
SCITAG_MAX = EXPERIMENT_MAX << 6 | ACTIVITY_MAX


class LabelError(ValueError):
    """A value does not fit the SciTags flow label or scitag layout."""


class Label(NamedTuple):
    """The parts of a decoded flow label."""

    experiment: int
    activity: int
    entropy: int


def _reverse9(value: int) -> int:
    out = 0
    for _ in range(9):
        out = out << 1 | value & 1
        value >>= 1
    return out


# Bit reversal is its own inverse, so one table serves encode and decode.
_REVERSED = tuple(_reverse9(v) for v in range(EXPERIMENT_MAX + 1))


def _check(value: object, what: str, maximum: int) -> int:
    # bool is an int subclass, but True as an experiment ID is a bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        plain_int = isinstance(value, int) and not isinstance(value, bool)
        shown = show(value, 40) if plain_int else f"{show(value, 40)} ({type(value).__name__})"
        raise LabelError(f"{what} must be an integer 0-{maximum}, got {shown}")
    return int(value)


def check_experiment(value: object) -> int:
    """Return ``value`` as an experiment ID (0-511) or raise :class:`LabelError`."""
    return _check(value, "experiment ID", EXPERIMENT_MAX)


def check_activity(value: object) -> int:
    """Return ``value`` as an activity ID (0-63) or raise :class:`LabelError`."""
    return _check(value, "activity ID", ACTIVITY_MAX)


def check_entropy(value: object) -> int:
    """Return ``value`` as 5 entropy bits (0-31) or raise :class:`LabelError`."""
    return _check(value, "entropy", ENTROPY_MAX)


def encode(experiment: int, activity: int, entropy: int | None = None) -> int:
    """Build the 20-bit flow label for ``experiment`` and ``activity``.

    ``entropy`` (0-31) fills the five random bits as described in the module
    docstring; when it is None, fresh bits come from :mod:`secrets`.

    >>> hex(encode(2, 15, entropy=0))
    '0x1003c'
    """
    if entropy is None:
        entropy = secrets.randbits(5)
    # Fast path for the common, already valid case; anything else is checked
    # (and rejected with a message) below.
    if not (
        type(experiment) is int
        and 0 <= experiment <= EXPERIMENT_MAX
        and type(activity) is int
        and 0 <= activity <= ACTIVITY_MAX
        and type(entropy) is int
        and 0 <= entropy <= ENTROPY_MAX
    ):
        experiment = check_experiment(experiment)
        activity = check_activity(activity)
        entropy = check_entropy(entropy)
    return (
        (entropy & 0b11000) << 15
        | _REVERSED[experiment] << 9
        | (entropy & 0b00100) << 6
        | activity << 2
        | entropy & 0b00011
    )


def decode(label: int) -> Label:
    """Split a 20-bit flow label into experiment, activity and entropy.

    >>> decode(0x1003C)
    Label(experiment=2, activity=15, entropy=0)
    """
    label = _check(label, "flow label", LABEL_MAX)
    return Label(
        _REVERSED[label >> 9 & EXPERIMENT_MAX],
        label >> 2 & ACTIVITY_MAX,
        (label >> 18) << 3 | (label >> 8 & 1) << 2 | label & 0b11,
    )


def scitag(experiment: int, activity: int) -> int:
    """The scitag integer ``experiment << 6 | activity``.

    >>> scitag(2, 15)
    143
    """
    return check_experiment(experiment) << 6 | check_activity(activity)


def from_scitag(value: int) -> tuple[int, int]:
    """Split a scitag integer into ``(experiment, activity)``.

    >>> from_scitag(143)
    (2, 15)
    """
    value = _check(value, "scitag", SCITAG_MAX)
    return value >> 6, value & ACTIVITY_MAX
