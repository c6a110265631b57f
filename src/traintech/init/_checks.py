"""Argument checks shared by the functional inits (raised before any tensor is touched)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["check_gain", "check_generator_device", "check_tensor"]


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


def check_generator_device(generator: object, tensors: Iterable[Tensor]) -> None:
    """Raise before any write if ``generator`` cannot sample on the tensors' device.

    Raises:
        TypeError: if ``generator`` is neither None nor a ``torch.Generator``.
        ValueError: if a (non-meta) tensor lives on another device type than ``generator``.
    """
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    for t in tensors:
        if t.device.type not in ("meta", generator.device.type):
            raise ValueError(
                f"generator is on {generator.device} but the model has parameters on "
                f"{t.device}; pass torch.Generator(device={t.device.type!r})"
            )
