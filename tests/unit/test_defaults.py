"""Defaults defined in two languages agree: Python's and bpf/marker.h's."""

from __future__ import annotations

import pytest

from flowlabel import defaults


def test_the_default_capacity_is_the_one_the_object_is_compiled_with() -> None:
    bpf = pytest.importorskip("flowlabel._bpf",
                              reason="the extension is not installed (nox -s tests installs it)")
    assert bpf.lib.FLOWLABEL_DEFAULT_MAX_FLOWS == defaults.MAX_FLOWS
    assert defaults.MAX_FLOWS <= defaults.MAX_FLOWS_LIMIT
