"""One set of value checks, shared by the settings, the web config, the sources file and the simulators.

Text (variables, flags, the simulators' flags): `decimal` and `whole` speak one
number grammar, plain ASCII decimal; each raises ValueError saying what is
allowed, and the caller names the variable.

Decoded documents (YAML/JSON: web config, sources file, admin bodies): each
check takes the value and `where` (the dotted key, as the operator wrote it)
and returns the typed value or raises ValueError with one line naming
`where`, so every document reports a wrong value the same way. `fields` runs a
table of them over one mapping: unknown keys are refused, absent keys are
checked as None (each check decides what "absent" means). `yaml_document`
is the one strict YAML reading (duplicate keys refused, as Go's decoder does).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")  # control characters: never in a value that reaches a log or a label
LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def label_name_problem(name: object) -> str | None:
    """Why `name` cannot be an extra target label (TARGET_LABELS, a source's labels); None when it can."""
    if not isinstance(name, str) or not LABEL_NAME_RE.fullmatch(name):
        return "is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)"
    if name.startswith("__"):
        return "is reserved (names starting with __ are Prometheus' own)"
    if name == "source":
        return "is set from the name"
    return None

# --- text --------------------------------------------------------------------------------------

_DECIMAL_RE = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_INTEGER_RE = re.compile(r"[0-9]+")
_NUMBER_CHARS = 64  # longer than any value in range: no 5,000-digit conversions


def _number_text(text: str, pattern: re.Pattern[str]) -> str | None:
    """`text` when it is plain ASCII decimal (no sign, exponent, `_`, spaces or other scripts' digits), else None.

    Python's float() and int() accept far more (`1_000`, Arabic-Indic digits, `inf`, `1e-300`, surrounding
    Unicode spaces); every variable and flag speaks one grammar instead, the one an operator writes.
    """
    return text if len(text) <= _NUMBER_CHARS and pattern.fullmatch(text) else None


def decimal(minimum: float, maximum: float, *, open_min: bool = False) -> Callable[[str], float]:
    """A parser of decimal text in [minimum, maximum] (above minimum with `open_min`)."""
    low = "above" if open_min else "from"
    allowed = f"a decimal number {low} {minimum:g} to {maximum:g}"

    def parse(text: str) -> float:
        plain = _number_text(text, _DECIMAL_RE)
        if plain is None:
            raise ValueError(allowed)
        value = float(plain)
        if value > maximum or value < minimum or (open_min and value == minimum):
            raise ValueError(allowed)
        return value

    return parse


def whole(minimum: int, maximum: int) -> Callable[[str], int]:
    """A parser of integer text in [minimum, maximum]."""
    allowed = f"an integer from {minimum} to {maximum}"

    def parse(text: str) -> int:
        plain = _number_text(text, _INTEGER_RE)
        if plain is None:
            raise ValueError(allowed)
        value = int(plain)
        if not minimum <= value <= maximum:
            raise ValueError(allowed)
        return value

    return parse


# --- decoded documents -------------------------------------------------------------------------

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


def yaml_document(raw: bytes | str) -> Any:
    """The YAML document in `raw`, read strictly: a key given twice or a key that is not a plain value is refused.

    ValueError says where ("valid YAML at line L, column C (duplicate key 'url')"); ImportError when PyYAML
    (an optional extra, imported here only) is absent, for the caller to word.
    """
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that rejects duplicate keys (PyYAML keeps the last one silently; Go's decoder refuses)."""

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(None, None, "a mapping key is not a plain value",
                                                        key_node.start_mark) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return loader.construct_mapping(node)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        return yaml.load(raw, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"valid YAML{where} ({' '.join(str(problem).split())[:200]})") from None
