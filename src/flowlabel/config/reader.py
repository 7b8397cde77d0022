"""From a decoded document to a :class:`~.schema.Config`: types, checks, aliases, defaults, origins.

Every value is checked against its field's annotation and check; an unknown key
or a bad value is a :class:`ConfigError` naming its path, e.g.
``backends.marker.removeQdisc: expected a boolean, got "yes"``. Each format
(:mod:`.formats`) reads with its own defaults where flowd-go's differ from
flowlabel's, and the reader records where every value it sets came from.
"""


from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Union

from .._text import show_json
from .schema import Config, ConfigError

__all__ = ["Reading", "json_name", "read"]


def json_name(spec: dataclasses.Field[Any]) -> str:
    """The key that names the field ``spec`` in a file."""
    key = spec.metadata.get("key")
    if key:
        return str(key)
    head, *rest = spec.name.split("_")
    return head + "".join(part.title() for part in rest)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclass
class Reading:
    """One reading of a document: its format's defaults in, the origin of every value out."""

    #: Defaults of this format that differ from flowlabel's, by key path.
    defaults: dict[str, Any] = field(default_factory=dict)
    #: What the defaults above are called in :attr:`origins` (e.g. "flowd-go 2.x default").
    defaults_name: str = "default"
    #: Where a value at a key path came from, when the document gave it ("conf.yaml line 12").
    located: dict[str, str] = field(default_factory=dict)
    #: The origin of every value set from the document or from this format's defaults.
    origins: dict[str, str] = field(default_factory=dict)
    #: Key paths the document gave, whatever their origin text.
    given: set[str] = field(default_factory=set)
    #: Things worth a warning that are not errors (a stray quote in a key).
    warnings: list[str] = field(default_factory=list)
    where: str = "the configuration"


def read(document: object, reading: Reading) -> Config:
    config: Config = _section(Config, document, "", "", reading)
    return config


_KIND_NAMES = {int: "an integer", str: "a string", bool: "a boolean", float: "a number"}


def _value(kind: Any, value: object, path: str, canon: str, reading: Reading) -> Any:
    """``value`` checked against the annotation ``kind``.

    ``path`` is the key path as the document spells it (for errors), ``canon``
    as the schema does (for origins).
    """
    origin = typing.get_origin(kind)
    if origin is Union:
        options = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if value is None:
            return None
        for option in options[:-1]:
            try:
                return _value(option, value, path, canon, reading)
            except ConfigError:
                continue
        try:
            return _value(options[-1], value, path, canon, reading)
        except ConfigError:
            if len(options) == 1:
                raise
        raise ConfigError(path, f"expected {' or '.join(_KIND_NAMES[o] for o in options)}, "
                                f"got {show_json(value)}")
    if dataclasses.is_dataclass(kind):
        return _section(kind, value, path, canon, reading)  # type: ignore[arg-type]
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(path, f"expected an array, got {show_json(value)}")
        (item,) = typing.get_args(kind)
        return [_value(item, v, f"{path}[{i}]", f"{canon}[{i}]", reading) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected an object, got {show_json(value)}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected a boolean, got {show_json(value)}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {show_json(value)}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {show_json(value)}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {show_json(value)}")
        return value
    raise TypeError(f"no reader for {kind!r}")  # a bug in the schema


def _fields(cls: type[Any]) -> dict[str, dataclasses.Field[Any]]:
    """Every key that names a field of ``cls``, its aliases included."""
    names: dict[str, dataclasses.Field[Any]] = {}
    for spec in dataclasses.fields(cls):
        names[json_name(spec)] = spec
        for alias in spec.metadata.get("aliases", ()):
            names[alias] = spec
    return names


def _key(key: object, names: dict[str, Any], path: str, reading: Reading) -> str | None:
    """The key, or None for a known key spelled with stray quotes: skipped with a warning.

    flowd-go's sample configuration has ``workDir": ...``, which flowd-go
    ignores as an unknown key; flowlabel ignores it too rather than start
    writing where the site never asked it to.
    """
    if not isinstance(key, str):
        raise ConfigError(_join(path, str(key)), "keys must be strings")
    if key not in names:
        stripped = key.strip("\"'")
        if stripped != key and stripped in names:
            reading.warnings.append(f"{_join(path, key)}: ignored, as flowd-go ignores it (a stray quote; "
                                    f"write {stripped} to set it)")
            return None
    return key


def _section(cls: type[Any], value: object, path: str, canon: str, reading: Reading) -> Any:
    if not isinstance(value, dict):
        if not path:
            raise ConfigError("", f"{reading.where} must be an object (a mapping of keys), "
                                  f"got {show_json(value)}")
        raise ConfigError(path, f"expected an object, got {show_json(value)}")
    hints = typing.get_type_hints(cls)
    names = _fields(cls)
    kwargs: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for raw_key, item in value.items():
        key = _key(raw_key, names, path, reading)
        if key is None:
            continue
        where = _join(path, key)
        spec = names.get(key)
        if spec is None:
            known = ", ".join(json_name(f) for f in dataclasses.fields(cls))
            raise ConfigError(_join(path, str(raw_key)), f"unknown key (known here: {known})")
        canonical = _join(canon, json_name(spec))
        if spec.name in spelled:
            raise ConfigError(where, f"{spelled[spec.name]} and {key} are the same setting; give one")
        spelled[spec.name] = key
        checked = _value(hints[spec.name], item, where, canonical, reading)
        check = spec.metadata.get("check")
        if check is not None and checked is not None:
            problem = check(checked)
            if problem:
                raise ConfigError(where, problem)
        kwargs[spec.name] = checked
        reading.given.add(canonical)
        reading.origins[canonical] = reading.located.get(_join(path, str(raw_key)), reading.where)
    for spec in dataclasses.fields(cls):
        canonical = _join(canon, json_name(spec))
        if spec.name not in kwargs and canonical in reading.defaults:
            kwargs[spec.name] = reading.defaults[canonical]
            reading.origins[canonical] = reading.defaults_name
    return cls(**kwargs)
