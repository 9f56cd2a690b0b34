"""Argument checks shared by the public factories: fail early, name the value."""

from __future__ import annotations

import math
from typing import Iterable


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(value):
        raise ValueError(f"{name} must be a number, got nan")
    return float(value)


def open_interval(name: str, value, low: float, high: float) -> float:
    """Checks ``low < value < high``."""
    v = _number(name, value)
    if not low < v < high:
        raise ValueError(f"{name} must be in ({low}, {high}), got {value!r}")
    return v


def closed_interval(name: str, value, low: float, high: float) -> float:
    """Checks ``low <= value <= high``."""
    v = _number(name, value)
    if not low <= v <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
    return v


def half_open_interval(name: str, value, low: float, high: float) -> float:
    """Checks ``low < value <= high``."""
    v = _number(name, value)
    if not low < v <= high:
        raise ValueError(f"{name} must be in ({low}, {high}], got {value!r}")
    return v


def at_least(name: str, value, low: int) -> int:
    """Checks an integer ``value >= low``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def one_of(name: str, value, allowed: Iterable[str]) -> str:
    """Checks that ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(
            f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}"
        )
    return value


def closed_open_interval(name: str, value, low: float, high: float) -> float:
    """Checks ``low <= value < high``."""
    v = _number(name, value)
    if not low <= v < high:
        raise ValueError(f"{name} must be in [{low}, {high}), got {value!r}")
    return v


def non_negative(name: str, value) -> float:
    """Checks a number ``value >= 0`` (finite)."""
    v = _number(name, value)
    if not 0.0 <= v < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def boolean(name: str, value) -> bool:
    """Checks that ``value`` is True or False (not 0/1 or a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value
