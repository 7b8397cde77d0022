"""Loaded classifiers for the BPF_PROG_TEST_RUN tests (see harness.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import OBJECT, Classifier

from flowlabel.marker import Program


def _loaded(**options: bool) -> Iterator[Program]:
    with Program(OBJECT, **options) as program:
        yield program


@pytest.fixture(scope="session")
def l2_program() -> Iterator[Program]:
    yield from _loaded()


@pytest.fixture(scope="session")
def l3_program() -> Iterator[Program]:
    yield from _loaded(l3=True)


@pytest.fixture
def marker(l2_program: Program) -> Iterator[Classifier]:
    classifier = Classifier(l2_program, l3=False)
    yield classifier
    classifier.clear()


@pytest.fixture
def marker_l3(l3_program: Program) -> Iterator[Classifier]:
    classifier = Classifier(l3_program, l3=True)
    yield classifier
    classifier.clear()
