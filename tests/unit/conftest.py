"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowlabel.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
# Published SciTags reference data kept beside the project checkout.
SHARED_SCITAGS = ROOT.parent / "shared" / "scitags"
PACKAGE_DATA = ROOT / "src" / "flowlabel" / "data"
# A copy of the published firefly schema (v1.0.0, trailing commas and all).
TEST_DATA = ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def registry() -> Registry:
    """The registry snapshot shipped inside the package."""
    return Registry.bundled()


@pytest.fixture(scope="session")
def reference_registry_path() -> Path:
    """The published registry snapshot: the shared copy if present, else the package's."""
    shared = SHARED_SCITAGS / "registry-api.json"
    return shared if shared.is_file() else PACKAGE_DATA / "registry-api.json"


@pytest.fixture(scope="session")
def firefly_schema_path() -> Path:
    return TEST_DATA / "firefly.schema.json"
