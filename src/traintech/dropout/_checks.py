"""Argument checks and generator helpers shared by every dropout layer and functional."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

#: The dropout variants selected by ``mode``.
MODES = ("inverted", "original")


def check_p(p: object, name: str = "p", *, allow_one: bool = True) -> float:
    """Return ``p`` as a float after checking it is a probability.

    Raises:
        TypeError: if ``p`` is not a real number.
        ValueError: if ``p`` is outside ``[0, 1]`` (or equal to 1 when ``allow_one`` is False).
    """
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(p).__name__} ({p!r})")
    value = float(p)
    if math.isnan(value) or value < 0.0 or value > 1.0:
        raise ValueError(f"{name} must be a dropout probability in [0, 1], got {p}")
    if not allow_one and value == 1.0:
        raise ValueError(
            f"{name}=1.0 is not allowed here: every unit would be dropped and the kept units "
            f"cannot be rescaled; use {name} < 1"
        )
    return value


def check_mode(mode: object) -> str:
    """Return ``mode`` after checking it names a dropout variant.

    Raises:
        ValueError: if ``mode`` is not ``"inverted"`` or ``"original"``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return str(mode)


def check_generator(generator: object) -> torch.Generator | None:
    """Return ``generator`` after checking it is ``None`` or a ``torch.Generator``.

    Raises:
        TypeError: if ``generator`` is anything else.
    """
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    return generator


def check_training(training: object) -> bool:
    """Return ``training`` after checking it is a bool (catches a rate passed by position).

    Raises:
        TypeError: if ``training`` is not a bool.
    """
    if not isinstance(training, bool):
        raise TypeError(
            f"training must be a bool (pass training=self.training), got "
            f"{type(training).__name__} ({training!r})"
        )
    return training


def resolve_generator(device: torch.device, generator: torch.Generator | None) -> torch.Generator:
    """The generator random draws for ``device`` use: ``generator`` or the device's default."""
    if generator is not None:
        return generator
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]
    return torch.default_generator


def uniform(
    shape: tuple[int, ...] | torch.Size,
    device: torch.device,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Float32 uniforms in ``[0, 1)`` of ``shape`` on ``device`` drawn from ``generator``."""
    if generator is None:  # this overload takes symbolic shapes under torch.compile
        return torch.rand(shape, device=device, dtype=torch.float32)
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float32)


def keep_mask(
    shape: tuple[int, ...] | torch.Size,
    p: float,
    device: torch.device,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Bool mask of ``shape``: each entry ``True`` (kept) with probability ``1 - p``."""
    return uniform(shape, device, generator) >= p


def check_input(input: object, name: str = "input") -> Tensor:
    """Return ``input`` after checking it is a floating-point (or complex) tensor.

    Raises:
        TypeError: if ``input`` is not a tensor or has an integer/bool dtype.
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(input).__name__}")
    if not (input.is_floating_point() or input.is_complex()):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {input.dtype}")
    return input


def feature_mask_shape(input: Tensor, batched: bool) -> tuple[int, ...]:
    """Shape of a per-channel mask: ``(N, C, 1, ...)`` (batched) or ``(C, 1, ...)``."""
    lead = 2 if batched else 1
    return tuple(input.shape[:lead]) + (1,) * (input.dim() - lead)


def mul(input: Tensor, factor: Tensor | float, inplace: bool) -> Tensor:
    """``input * factor``, in place when ``inplace``."""
    return input.mul_(factor) if inplace else input * factor
