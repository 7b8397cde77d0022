"""The reliability group: figures each test records are printed as one table at the end."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_FIGURES: dict[str, dict[str, Any]] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.reliability)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_PASSED] = report.passed
    return report


_PASSED = pytest.StashKey[bool]()


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A dict whose contents end up in the reliability table (and JSON, if asked for): the
    figures of tests that passed only, whose assertions hold them."""
    figures: dict[str, Any] = {}
    yield figures
    if figures and request.node.stash.get(_PASSED, False):
        _FIGURES[request.node.name] = figures


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("reliability figures")
    for test, figures in _FIGURES.items():
        terminalreporter.write_line(test)
        for key, value in figures.items():
            if isinstance(value, float):
                shown = f"{value:,.3f}"
            else:
                shown = f"{value:,}" if isinstance(value, int) else str(value)
            terminalreporter.write_line(f"    {key:<36} {shown}")
    out = os.environ.get("FLOWLABEL_RELIABILITY_JSON")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(_FIGURES, indent=2))


# The end-to-end helpers (the daemon as a subprocess in a namespace) are shared with tests/e2e.
sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))


@pytest.fixture
def namespace() -> Iterator[Any]:
    """A network namespace of its own with loopback up, deleted after the test."""
    from support.netns import Namespace

    with Namespace() as ns:
        yield ns
