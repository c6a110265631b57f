"""Argument checks shared by the functional inits (raised before any tensor is touched)."""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["check_gain", "check_tensor"]


def check_tensor(tensor: object, name: str = "tensor") -> Tensor:
    """Return ``tensor`` if it is a ``torch.Tensor``, else raise ``TypeError`` naming it."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    return tensor


def check_gain(gain: float) -> float:
    """Raise ``ValueError`` unless ``gain`` is a finite number >= 0.

    Torch does not check ``gain``: a negative one makes ``uniform_``/``normal_`` fail with a
    ``RuntimeError`` deep inside, or silently flips the sign of an orthogonal matrix.
    """
    if isinstance(gain, bool) or not isinstance(gain, (int, float)):
        raise TypeError(f"gain must be a real number, got {type(gain).__name__} {gain!r}")
    if not (math.isfinite(gain) and gain >= 0):
        raise ValueError(f"gain ({gain}) must be a finite number >= 0; the sign carries no meaning")
    return float(gain)
