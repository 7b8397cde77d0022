"""The published JSON schemas, read as they are published (with trailing commas) and checked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

TEST_DATA = Path(__file__).resolve().parents[1] / "data"


def load_lenient_json(text: str) -> Any:
    """json.loads that also takes the trailing commas the published schemas contain."""
    out = []
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            escaped = ch == "\\" and not escaped
            if ch == '"' and not escaped:
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == ",":
            rest = text[i + 1 :].lstrip()
            if rest[:1] in ("}", "]"):
                continue
        out.append(ch)
    return json.loads("".join(out))


def schema_validator_of(path: Path) -> Any:
    """A validator for the published JSON schema at ``path``, date-time formats checked."""
    jsonschema = pytest.importorskip("jsonschema",
                                     reason="jsonschema is not installed (pip install jsonschema)")
    schema = load_lenient_json(path.read_text())
    cls = jsonschema.Draft202012Validator
    cls.check_schema(schema)
    # Without a date-time checker the schema would accept any string as a time.
    assert "date-time" in cls.FORMAT_CHECKER.checkers, "install jsonschema[format-nongpl]"
    return cls(schema, format_checker=cls.FORMAT_CHECKER)
