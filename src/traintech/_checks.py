"""Argument checks shared by every family: one module, one signature convention.

Every check takes the value first and the argument's name second (``check_x(value, name)``),
returns the value converted to its canonical Python type, and raises before any state changes:
``TypeError`` for a wrong type, ``ValueError`` for a wrong value, each naming the argument, the
value received and what is allowed. Family-specific checks (a dropout ``mode``, a norm layer's
``normalized_shape``) stay beside their family but are written in the same convention.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Real
from typing import Any

import torch
from torch import Tensor


def _real(value: Any, name: str, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be {allowed}, got {type(value).__name__} ({value!r})")
    return float(value)


def check_nonneg(value: Any, name: str, *, allow_inf: bool = True) -> float:
    """``value`` as a float after checking it is a real number >= 0 (never NaN).

    Raises:
        TypeError: if ``value`` is not a real number (bools are refused too).
        ValueError: if ``value`` is negative, NaN, or inf when ``allow_inf`` is False.
    """
    allowed = "a number >= 0" if allow_inf else "a finite number >= 0"
    out = _real(value, name, allowed)
    if math.isnan(out) or out < 0 or (math.isinf(out) and not allow_inf):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return out


def check_positive(value: Any, name: str, *, allow_inf: bool = False) -> float:
    """``value`` as a float after checking it is a real number > 0 (finite unless allowed).

    Raises:
        TypeError: if ``value`` is not a real number.
        ValueError: if ``value`` is <= 0, NaN, or inf when ``allow_inf`` is False.
    """
    allowed = "a number > 0" if allow_inf else "a finite number > 0"
    out = _real(value, name, allowed)
    if math.isnan(out) or out <= 0 or (math.isinf(out) and not allow_inf):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return out


def check_unit_interval(
    value: Any, name: str, *, low_open: bool = False, high_open: bool = False
) -> float:
    """``value`` as a float after checking it lies in ``[0, 1]`` (ends open where asked).

    Raises:
        TypeError: if ``value`` is not a real number.
        ValueError: if ``value`` is NaN or outside the interval.
    """
    interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    out = _real(value, name, f"a number in {interval}")
    low_ok = out > 0 if low_open else out >= 0
    high_ok = out < 1 if high_open else out <= 1
    if math.isnan(out) or not (low_ok and high_ok):
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return out


def check_positive_int(value: Any, name: str) -> int:
    """``value`` after checking it is an int >= 1.

    Raises:
        TypeError: if ``value`` is not an int (bools are refused).
        ValueError: if ``value`` < 1.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__} ({value!r})")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def check_bool(value: Any, name: str) -> bool:
    """``value`` after checking it is a bool (catches a number passed in a flag's position).

    Raises:
        TypeError: if ``value`` is not a bool.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
    return value


def check_tensor(value: Any, name: str) -> Tensor:
    """``value`` after checking it is a ``torch.Tensor``.

    Raises:
        TypeError: if ``value`` is not a tensor.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_generator(value: Any, name: str = "generator") -> torch.Generator | None:
    """``value`` after checking it is None or a ``torch.Generator``.

    Raises:
        TypeError: if ``value`` is anything else.
    """
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(value).__name__}")
    return value


def check_choice(value: Any, name: str, choices: tuple[Any, ...]) -> Any:
    """``value`` after checking it is one of ``choices``.

    Raises:
        ValueError: if ``value`` is not among ``choices``.
    """
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_generator_device(
    value: Any, tensors: Iterable[Tensor], name: str = "generator"
) -> torch.Generator | None:
    """``value`` after checking it is None or a ``torch.Generator`` that can fill ``tensors``.

    A generator samples on its own device type only; meta tensors accept any generator.

    Raises:
        TypeError: if ``value`` is neither None nor a ``torch.Generator``.
        ValueError: if a (non-meta) tensor lives on another device type than ``value``.
    """
    check_generator(value, name)
    if value is None:
        return None
    for t in tensors:
        if t.device.type not in ("meta", value.device.type):
            raise ValueError(
                f"{name} is on {value.device} but the tensors to fill are on {t.device}; "
                f"pass torch.Generator(device={t.device.type!r})"
            )
    return value


def check_norm_type(value: Any, name: str = "norm_type") -> float:
    """``value`` as a float after checking it is a p-norm order in ``(0, inf]``.

    Raises:
        TypeError: if ``value`` is not a real number (a string such as ``"inf"`` too).
        ValueError: if ``value`` is NaN or <= 0.
    """
    out = _real(value, name, "a real number (e.g. 2.0, or math.inf for the max-norm)")
    if math.isnan(out) or out <= 0:
        raise ValueError(f"{name} must be > 0 (or math.inf), got {value!r}")
    return out
