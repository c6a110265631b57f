"""The affine parameters every norm layer registers the way its ``torch.nn`` namesake does."""

from __future__ import annotations

import torch
from torch import nn


def register_affine(
    module: nn.Module,
    shape: int | tuple[int, ...],
    *,
    affine: bool,
    bias: bool,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> None:
    """Register ``weight`` (ones) and ``bias`` (zeros) of ``shape`` on ``module``, or ``None``.

    ``bias`` is registered only with ``affine``; a disabled parameter is registered as ``None``
    so that ``state_dict`` keys and attribute access match torch's norm layers.
    """
    factory = {"device": device, "dtype": dtype}
    weight = nn.Parameter(torch.ones(shape, **factory)) if affine else None  # type: ignore[arg-type]
    shift = nn.Parameter(torch.zeros(shape, **factory)) if affine and bias else None  # type: ignore[arg-type]
    module.register_parameter("weight", weight)
    module.register_parameter("bias", shift)
