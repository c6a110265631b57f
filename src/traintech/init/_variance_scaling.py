"""Keras-style variance scaling and the LeCun inits built on it."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_generator_device, check_positive, check_tensor
from ._fans_and_gain import correct_fan
from ._trunc_normal import trunc_normal_

__all__ = [
    "DISTRIBUTIONS",
    "TRUNCATED_STD",
    "lecun_normal_",
    "lecun_uniform_",
    "variance_scaling_",
    "variance_scaling_std",
]

#: Standard deviation of a standard normal truncated to [-2, 2] (Keras' constant).
TRUNCATED_STD = 0.87962566103423978

#: The accepted ``distribution`` names.
DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")


def variance_scaling_std(
    tensor: Tensor, scale: float = 1.0, mode: str = "fan_in", module: nn.Module | None = None
) -> float:
    """The target standard deviation ``sqrt(scale / n)`` of :func:`variance_scaling_`."""
    n = max(1.0, correct_fan(tensor, mode, module))
    return math.sqrt(scale / n)


def variance_scaling_(
    tensor: Tensor,
    scale: float = 1.0,
    mode: str = "fan_in",
    distribution: str = "truncated_normal",
    generator: torch.Generator | None = None,
    *,
    module: nn.Module | None = None,
) -> Tensor:
    r"""Fill ``tensor`` with variance ``scale / n``, as Keras' ``VarianceScaling``.

    :math:`n` is ``fan_in``, ``fan_out`` or ``fan_avg = (fan_in + fan_out) / 2`` (at least 1).

    .. math::
        \text{truncated\_normal:}\ \ w \sim \mathcal{N}(0, s^2) \text{ cut at } \pm 2s,\
            s = \frac{\sqrt{\text{scale}/n}}{0.8796\ldots} \\
        \text{untruncated\_normal:}\ \ w \sim \mathcal{N}(0, \text{scale}/n) \\
        \text{uniform:}\ \ w \sim \mathcal{U}(-l, l),\ l = \sqrt{3\,\text{scale}/n}

    :math:`0.87962566103423978` is the standard deviation of a unit normal cut at
    :math:`\pm 2`, so all three have variance exactly :math:`\text{scale}/n`.
    ``scale=2, mode="fan_in"`` is He, ``scale=1, mode="fan_avg"`` is Glorot, ``scale=1,
    mode="fan_in"`` is LeCun (Klambauer et al. 2017, https://arxiv.org/abs/1706.02515 ).

    Args:
        tensor: an n-dimensional tensor, n >= 2.
        scale: the variance multiplier, > 0.
        mode: ``"fan_in"`` (default), ``"fan_out"`` or ``"fan_avg"``.
        distribution: ``"truncated_normal"`` (default), ``"untruncated_normal"`` or
            ``"uniform"``.
        generator: the torch Generator to sample from (default: the global one).
        module: optional layer owning ``tensor``, for exact fans (:func:`fan_in_and_fan_out`).

    Returns:
        ``tensor``, filled under ``torch.no_grad()``.

    Raises:
        TypeError: for a non-tensor ``tensor``, a non-numeric ``scale`` or a ``generator``
            that is not a ``torch.Generator`` (nor None).
        ValueError: for ``scale <= 0``, an unknown ``mode`` or ``distribution``, fewer than
            2 dimensions, or a ``generator`` on another device type than ``tensor``.

    Example:
        >>> w = variance_scaling_(torch.empty(500, 400), scale=2.0, mode="fan_avg",
        ...                       generator=torch.Generator().manual_seed(0))
        >>> round(w.var().item() * 450, 2)  # scale
        2.0
    """
    check_tensor(tensor, "tensor")
    check_generator_device(generator, (tensor,))
    scale = check_positive(scale, "scale")
    distribution = check_choice(distribution, "distribution", DISTRIBUTIONS)
    std = variance_scaling_std(tensor, scale, mode, module)
    if distribution == "truncated_normal":
        s = std / TRUNCATED_STD
        return trunc_normal_(tensor, 0.0, s, -2.0 * s, 2.0 * s, generator=generator)
    with torch.no_grad():
        if distribution == "untruncated_normal":
            return tensor.normal_(0.0, std, generator=generator)
        limit = math.sqrt(3.0) * std
        return tensor.uniform_(-limit, limit, generator=generator)


def lecun_normal_(
    tensor: Tensor,
    generator: torch.Generator | None = None,
    *,
    module: nn.Module | None = None,
) -> Tensor:
    r"""LeCun normal: truncated normal with :math:`\operatorname{Var}(w) = 1/\text{fan\_in}`.

    .. math::
        w \sim \mathcal{N}(0, s^2) \text{ cut at } \pm 2s, \qquad
        s = \frac{1}{0.8796\ldots\sqrt{\text{fan\_in}}}

    ``variance_scaling_(tensor, 1.0, "fan_in", "truncated_normal")``, as Keras' and JAX's
    ``lecun_normal``. The init for SELU networks (Klambauer et al. 2017,
    https://arxiv.org/abs/1706.02515 ; LeCun et al. 1998, "Efficient BackProp").

    Args:
        tensor: an n-dimensional tensor, n >= 2.
        generator: the torch Generator to sample from (default: the global one).
        module: optional layer owning ``tensor``, for exact fans (:func:`fan_in_and_fan_out`).

    Returns:
        ``tensor``, filled under ``torch.no_grad()``.

    Raises:
        TypeError: for a non-tensor ``tensor`` or a ``generator`` that is not a
            ``torch.Generator`` (nor None).
        ValueError: for fewer than 2 dimensions, or a ``generator`` on another device type
            than ``tensor``.

    Example:
        >>> w = lecun_normal_(torch.empty(400, 300), generator=torch.Generator().manual_seed(0))
        >>> round(w.var().item() * 300, 1)
        1.0
    """
    return variance_scaling_(tensor, 1.0, "fan_in", "truncated_normal", generator, module=module)


def lecun_uniform_(
    tensor: Tensor,
    generator: torch.Generator | None = None,
    *,
    module: nn.Module | None = None,
) -> Tensor:
    r"""LeCun uniform: :math:`\mathcal{U}(-l, l)`, :math:`l = \sqrt{3/\text{fan\_in}}`.

    .. math::
        \operatorname{Var}(w) = \frac{1}{\text{fan\_in}}

    ``variance_scaling_(tensor, 1.0, "fan_in", "uniform")``, as Keras' ``LecunUniform``.
    LeCun et al. 1998, "Efficient BackProp"; Klambauer et al. 2017,
    https://arxiv.org/abs/1706.02515 .

    Args:
        tensor: an n-dimensional tensor, n >= 2.
        generator: the torch Generator to sample from (default: the global one).
        module: optional layer owning ``tensor``, for exact fans (:func:`fan_in_and_fan_out`).

    Returns:
        ``tensor``, filled under ``torch.no_grad()``.

    Raises:
        TypeError: for a non-tensor ``tensor`` or a ``generator`` that is not a
            ``torch.Generator`` (nor None).
        ValueError: for fewer than 2 dimensions, or a ``generator`` on another device type
            than ``tensor``.

    Example:
        >>> w = lecun_uniform_(torch.empty(400, 300), generator=torch.Generator().manual_seed(0))
        >>> round(w.abs().max().item() * 10, 1)  # sqrt(3 / 300) = 0.1
        1.0
    """
    return variance_scaling_(tensor, 1.0, "fan_in", "uniform", generator, module=module)
