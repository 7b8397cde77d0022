"""The effective configuration, key by key, with where each value came from (``flowlabel config``)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from .reader import Reading, json_name
from .schema import Config

__all__ = ["effective", "render"]


def _leaves(value: Any, path: str) -> list[tuple[str, Any]]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        found: list[tuple[str, Any]] = []
        for spec in dataclasses.fields(value):
            key = json_name(spec)
            found.extend(_leaves(getattr(value, spec.name), f"{path}.{key}" if path else key))
        return found
    if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
        return [leaf for i, item in enumerate(value) for leaf in _leaves(item, f"{path}[{i}]")]
    return [(path, value)]


def effective(config: Config) -> dict[str, Any]:
    """The configuration as one JSON object in flowlabel's key spelling (disabled sections are null)."""
    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {json_name(spec): convert(getattr(value, spec.name)) for spec in dataclasses.fields(value)}
        if isinstance(value, list):
            return [convert(item) for item in value]
        return value

    result: dict[str, Any] = convert(config)
    return result


def render(config: Config, reading: Reading) -> list[str]:
    """One ``key = value  # origin`` line per setting; sections that are off show as ``null``."""
    rows = [(path, json.dumps(value), reading.origins.get(path, "default"))
            for path, value in _leaves(config, "")]
    width = max(len(path) + len(value) + 3 for path, value, _ in rows)
    return [f"{f'{path} = {value}':<{width}}  # {origin}" for path, value, origin in rows]
