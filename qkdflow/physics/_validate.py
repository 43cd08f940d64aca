"""Small validation helpers shared by the physics modules.

Every failure raises ``ValueError`` with a one-line message ``"<section>.<field>: <reason>, got <value>"``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def as_float(field: str, value: Any) -> float:
    """Return ``value`` as a finite float or raise ValueError naming ``field``."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{field}: must be finite, got {value!r}")
    return out


def check_nonneg(field: str, value: Any) -> float:
    out = as_float(field, value)
    if out < 0:
        raise ValueError(f"{field}: must be >= 0, got {value!r}")
    return out


def check_positive(field: str, value: Any) -> float:
    out = as_float(field, value)
    if out <= 0:
        raise ValueError(f"{field}: must be > 0, got {value!r}")
    return out


def check_unit_interval(field: str, value: Any, *, open_high: bool = False) -> float:
    out = as_float(field, value)
    if out < 0 or out > 1 or (open_high and out == 1):
        rng = "[0, 1)" if open_high else "[0, 1]"
        raise ValueError(f"{field}: must be in {rng}, got {value!r}")
    return out


def check_keys(section: str, given: dict, allowed: set[str]) -> None:
    """Reject unknown keys so typos in a YAML file never pass silently."""
    if not isinstance(given, dict):
        raise ValueError(f"{section}: must be a mapping, got {type(given).__name__}")
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(f"{section}.{unknown[0]}: unknown field (allowed: {', '.join(sorted(allowed))})")
