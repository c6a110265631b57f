"""Argument checks shared by the clipper classes and the guarded step."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any


def check_nonneg(name: str, value: Any, *, allow_inf: bool = True) -> float:
    """Return ``value`` as a float after checking it is a real number >= 0 (and not NaN).

    Raises:
        TypeError: if ``value`` is not a real number (bools are refused too).
        ValueError: if ``value`` is negative, NaN, or inf when ``allow_inf`` is False.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r})")
    out = float(value)
    if math.isnan(out) or out < 0 or (math.isinf(out) and not allow_inf):
        allowed = "a number >= 0" if allow_inf else "a finite number >= 0"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return out


def check_norm_type(value: Any) -> float:
    """Return ``norm_type`` as a float after checking it is a number in ``(0, inf]``.

    Raises:
        TypeError: if ``norm_type`` is not a real number (a string such as ``"inf"`` too).
        ValueError: if ``norm_type`` is NaN or <= 0.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(
            f"norm_type must be a real number (e.g. 2.0, or math.inf for the max-norm), got "
            f"{type(value).__name__} ({value!r})"
        )
    out = float(value)
    if math.isnan(out) or out <= 0:
        raise ValueError(f"norm_type must be > 0 (or math.inf), got {value!r}")
    return out


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` after checking it is an int >= 1.

    Raises:
        TypeError: if ``value`` is not an int.
        ValueError: if ``value`` < 1.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value
