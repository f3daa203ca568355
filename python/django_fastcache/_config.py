"""Validation of ``CACHES[alias]["OPTIONS"]`` values: every bad value becomes an
``ImproperlyConfigured`` that names the option and repeats the value, at construction time."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured

__all__ = [
    "improperly", "option_bool", "option_choice", "option_int", "option_mapping", "option_number",
]

_MISSING = object()


def improperly(name: str, value: Any, expected: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"OPTIONS[{name!r}] must be {expected}, not {value!r}")


def option_bool(options: Mapping[str, Any], name: str, default: bool) -> bool:
    value = options.get(name, default)
    if not isinstance(value, bool):
        raise improperly(name, value, "True or False")
    return value


def option_choice(options: Mapping[str, Any], name: str, default: Any,
                  choices: tuple[Any, ...]) -> Any:
    value = options.get(name, default)
    if value not in choices:
        raise improperly(name, value, "one of " + ", ".join(map(repr, choices)))
    return value


def option_int(options: Mapping[str, Any], name: str, default: int | None, *, minimum: int,
               allow_none: bool = False) -> int | None:
    value = options.get(name, default)
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        expected = f"an integer >= {minimum}" + (" or None" if allow_none else "")
        raise improperly(name, value, expected)
    return value


def option_number(options: Mapping[str, Any], name: str, default: float | None, *,
                  positive: bool = True, allow_none: bool = False) -> float | None:
    """A finite int or float, > 0 (``positive``) or >= 0; ``None`` only if ``allow_none``."""
    value = options.get(name, default)
    if value is None and allow_none:
        return None
    ok = (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(value) and (value > 0 if positive else value >= 0)
    )
    if not ok:
        expected = "a number of seconds " + ("> 0" if positive else ">= 0")
        raise improperly(name, value, expected + (" or None" if allow_none else ""))
    return float(value)


def option_mapping(options: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = options.get(name, _MISSING)
    if value is _MISSING or value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise improperly(name, value, "a dict with str keys")
    return dict(value)
