"""Command-line checkers the tests run (actionlint, kubernetes-validate, ...), from the test
environment, which `nox -s tests` fills from noxfile.TEST_DEPS."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest


def tool(name: str, package: str) -> str:
    """The path of ``name``; without it the test skips, naming ``package``, or fails under
    FLOWLABEL_REQUIRE_KERNEL=1 (CI), where nothing may skip for want of a tool."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        missing(f"{name} is not installed (pip install {package}; `nox -s tests` installs it)")
    return found


def missing(why: str) -> NoReturn:
    """The test cannot run here, for ``why``: it skips, saying so, or fails under
    FLOWLABEL_REQUIRE_KERNEL=1 (CI and the kernel matrix), where nothing may skip."""
    if os.environ.get("FLOWLABEL_REQUIRE_KERNEL") == "1":
        pytest.fail(f"{why} (FLOWLABEL_REQUIRE_KERNEL=1 forbids skipping)")
    pytest.skip(why)


def program(name: str, package: str) -> str:
    """The path of the system program ``name`` (from the Debian package ``package``), or
    :func:`missing`."""
    found = shutil.which(name)
    if found is None:
        missing(f"{name} ({package}) is not installed")
    return found
