"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flowlabel.registry import Registry
from support.schemas import schema_validator_of

ROOT = Path(__file__).resolve().parents[2]
# Copies of published SciTags data: the firefly and registry schemas (v1.0.0, trailing commas
# and all) and the registry as https://www.scitags.org/api.json served it (modified 2025-09-04).
TEST_DATA = ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def registry() -> Registry:
    """The registry snapshot shipped inside the package."""
    return Registry.bundled()


@pytest.fixture(scope="session")
def reference_registry_path() -> Path:
    """The published registry snapshot, as the tests keep it (never the package's own copy)."""
    return TEST_DATA / "registry-api.json"


@pytest.fixture(scope="session")
def schema_validator() -> Any:
    """The published firefly schema's validator."""
    return schema_validator_of(TEST_DATA / "firefly.schema.json")


@pytest.fixture(scope="session")
def registry_schema_validator() -> Any:
    """The published registry schema's validator."""
    return schema_validator_of(TEST_DATA / "registry.schema.json")
