"""How bad input is quoted in error messages: short, and safe for any value a sender can make."""

from __future__ import annotations

import json

#: Characters of a quoted value before it is cut off with "...".
LIMIT = 60


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show(value: object, limit: int = LIMIT) -> str:
    """``repr(value)``, cut to ``limit`` characters; never raises, never slow."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        # repr() of a huge int is slow, and refused beyond sys.get_int_max_str_digits().
        return f"a {value.bit_length()}-bit integer"
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value[:limit]).decode("utf-8", "replace") + ("..." if len(value) > limit else "")
    try:
        text = repr(value)
    except Exception:  # e.g. RecursionError on deeply nested lists
        return f"<unprintable {type(value).__name__}>"
    return _cut(text, limit)


def show_json(value: object, limit: int = LIMIT) -> str:
    """A scalar as JSON writes it (``"yes"``, ``true``, ``null``); a container by its kind."""
    if isinstance(value, (dict, list)):
        return a(json_kind(value))
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        return show(value, limit)
    return _cut(text, limit)


def json_kind(value: object) -> str:
    """The JSON name of a value's type: null, boolean, integer, number, string, array or object."""
    if value is None:
        return "null"
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                       (list, "array"), (dict, "object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def a(noun: str) -> str:
    """The noun with its indefinite article: "an integer", "a string"."""
    return ("an " if noun[:1] in "aeiou" else "a ") + noun
