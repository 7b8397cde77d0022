"""Helpers shared by the test suites (importable because pytest puts tests/ on sys.path)."""

import os

#: ``nox -s stress`` sets FLOWLABEL_STRESS=1 for the long versions of the heavy tests.
STRESS = os.environ.get("FLOWLABEL_STRESS") == "1"
