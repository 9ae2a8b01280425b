"""One set of checks for decoded documents: the web config, the sources file, the simulators' admin bodies.

Each check takes the value and `where` (the dotted key, as the operator wrote
it) and returns the typed value or raises ValueError with one line naming
`where`, so every document reports a wrong value the same way. `fields` runs a
table of them over one mapping: unknown keys are refused, absent keys are
checked as None (each check decides what "absent" means).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from typing import Any

Check = Callable[[Any, str], Any]  # (value, where) -> typed value, or ValueError naming `where`

_NAMES: Mapping[type, str] = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
                              int: "an integer", float: "a number", type(None): "empty"}


def type_name(value: Any) -> str:
    """What a decoded YAML or JSON value is, in words for an error line ('a list', 'empty', ...)."""
    return _NAMES.get(type(value), type(value).__name__)


def mapping(value: Any, where: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a mapping, got {type_name(value)}")
    return value


def known_keys(doc: Mapping[Any, Any], where: str, allowed: Collection[str],
               unsupported: Collection[str] = ()) -> None:
    """Refuse a key that is not `allowed` (naming the allowed ones) or that sensor-sd does not support."""
    for key in doc:
        if key in unsupported:
            raise ValueError(f"{where}: {key!r} is not supported by sensor-sd")
        if key not in allowed:
            raise ValueError(f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")


def fields(doc: Any, where: str, schema: Mapping[str, Check], unsupported: Collection[str] = ()) -> dict[str, Any]:
    """`doc` checked as a mapping with the keys of `schema`, each value through its check (absent: None)."""
    known_keys(mapping(doc, where), where, schema, unsupported)
    return {key: check(doc.get(key), f"{where}.{key}") for key, check in schema.items()}


def string(value: Any, where: str) -> str | None:
    """A string; None when absent or empty."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {type_name(value)}")
    return value or None


def string_list(value: Any, where: str) -> tuple[str, ...]:
    """A list of strings; () when absent."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} must be a list of strings, got {type_name(value)}")
    return tuple(value)


def boolean(value: Any, where: str) -> bool | None:
    """true or false (never 'yes', 1 or a string); None when absent."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{where} must be a boolean, got {type_name(value)}")
    return value


def one_of(*names: str) -> Check:
    """A string naming one of `names`; None when absent or empty."""
    def check(value: Any, where: str) -> str | None:
        text = string(value, where)
        if text is not None and text not in names:
            raise ValueError(f"{where}: {text!r} is not one of {', '.join(names)}")
        return text

    return check


def integer(value: Any, where: str, low: int, high: int) -> int | None:
    """An integer in [low, high] (a boolean or a float is refused, not coerced); None when absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} must be an integer, got {type_name(value)}")
    if not low <= value <= high:
        raise ValueError(f"{where} must be between {low} and {high}, got {value}")
    return value


def number(value: Any, where: str, low: float, high: float) -> float | None:
    """A finite number in [low, high] (integers accepted; booleans, NaN and infinities refused); None when absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where} must be a number, got {type_name(value)}")
    if not low <= value <= high or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"{where} must be between {low:g} and {high:g}, got {value}")
    return float(value)
