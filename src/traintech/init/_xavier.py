"""Xavier / Glorot initialisation (Glorot & Bengio, 2010)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._checks import check_gain, check_tensor
from ._fans import fan_in_and_fan_out

__all__ = ["xavier_normal_", "xavier_std", "xavier_uniform_"]


def xavier_std(tensor: Tensor, gain: float = 1.0, module: nn.Module | None = None) -> float:
    """The standard deviation Xavier init gives ``tensor`` (see :func:`xavier_uniform_`)."""
    fan_in, fan_out = fan_in_and_fan_out(tensor, module)
    return gain * math.sqrt(2.0 / float(fan_in + fan_out))


def xavier_uniform_(
    tensor: Tensor,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    module: nn.Module | None = None,
) -> Tensor:
    r"""Fill ``tensor`` from :math:`\mathcal{U}(-a, a)`, as ``torch.nn.init.xavier_uniform_``.

    .. math::
        a = \text{gain} \sqrt{\frac{6}{\text{fan\_in} + \text{fan\_out}}}, \qquad
        \operatorname{Var}(w) = \text{gain}^2 \frac{2}{\text{fan\_in} + \text{fan\_out}}

    The variance is the harmonic compromise between keeping the forward variance
    (``1/fan_in``) and the backward variance (``1/fan_out``) of a linear layer with a unit-slope
    activation. Glorot & Bengio, 2010,
    https://proceedings.mlr.press/v9/glorot10a.html . With the same ``generator`` state the
    values equal torch's exactly; the global RNG is not touched when ``generator`` is given.

    Args:
        tensor: an n-dimensional tensor, n >= 2.
        gain: scaling factor, >= 0 (torch does not check; a negative one is a ``ValueError``).
        generator: the torch Generator to sample from (default: the global one).
        module: optional layer owning ``tensor``, for exact fans (:func:`fan_in_and_fan_out`).

    Returns:
        ``tensor``, filled under ``torch.no_grad()``.

    Raises:
        ValueError: for fewer than 2 dimensions or a negative ``gain``.

    Example:
        >>> w = xavier_uniform_(torch.empty(300, 200), generator=torch.Generator().manual_seed(0))
        >>> round(w.abs().max().item(), 2)  # the bound is sqrt(6 / 500)
        0.11
    """
    check_tensor(tensor)
    check_gain(gain)
    std = xavier_std(tensor, gain, module)
    bound = math.sqrt(3.0) * std
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)


def xavier_normal_(
    tensor: Tensor,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    module: nn.Module | None = None,
) -> Tensor:
    r"""Fill ``tensor`` from :math:`\mathcal{N}(0, \sigma^2)`, as ``torch.nn.init.xavier_normal_``.

    .. math::
        \sigma = \text{gain} \sqrt{\frac{2}{\text{fan\_in} + \text{fan\_out}}}

    Glorot & Bengio, 2010, https://proceedings.mlr.press/v9/glorot10a.html . Same values as
    torch for the same ``generator`` state.

    Args:
        tensor: an n-dimensional tensor, n >= 2.
        gain: scaling factor, >= 0.
        generator: the torch Generator to sample from (default: the global one).
        module: optional layer owning ``tensor``, for exact fans (:func:`fan_in_and_fan_out`).

    Returns:
        ``tensor``, filled under ``torch.no_grad()``.

    Raises:
        ValueError: for fewer than 2 dimensions or a negative ``gain``.

    Example:
        >>> w = xavier_normal_(torch.empty(400, 400), generator=torch.Generator().manual_seed(0))
        >>> round(w.std().item(), 3)  # sqrt(2 / 800) = 0.05
        0.05
    """
    check_tensor(tensor)
    check_gain(gain)
    std = xavier_std(tensor, gain, module)
    with torch.no_grad():
        return tensor.normal_(0.0, std, generator=generator)
