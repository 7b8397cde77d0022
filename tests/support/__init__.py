"""Helpers shared by the test suites (importable because pytest puts tests/ on sys.path)."""

import os
import time
from typing import Any

#: ``nox -s stress`` sets FLOWLABEL_STRESS=1 for the long versions of the heavy tests.
STRESS = os.environ.get("FLOWLABEL_STRESS") == "1"


def wait_until(condition: Any, timeout: float, interval: float = 0.05) -> bool:
    """Whether ``condition()`` came true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
