"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowlabel.registry import Registry

# Published SciTags reference data kept next to the project; tests that need a
# file only found there skip without it.
SHARED_SCITAGS = Path("/work/shared/scitags")
PACKAGE_DATA = Path(__file__).resolve().parents[2] / "src" / "flowlabel" / "data"


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
    path = SHARED_SCITAGS / "firefly.schema.json"
    if not path.is_file():
        pytest.skip(f"the published firefly schema is not at {path}")
    return path
