"""Kaiming / He initialisation (He et al., 2015)."""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from ._checks import check_tensor
from ._fans import correct_fan
from ._gain import calculate_gain

__all__ = ["kaiming_normal_", "kaiming_std", "kaiming_uniform_"]

_KAIMING_MODES = ("fan_in", "fan_out")


def kaiming_std(
    tensor: Tensor,
    a: float = 0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    module: nn.Module | None = None,
) -> float:
    """The standard deviation Kaiming init gives ``tensor`` (see :func:`kaiming_uniform_`)."""
    fan = correct_fan(tensor, mode, module, _KAIMING_MODES)
    gain = calculate_gain(nonlinearity, a)
    return gain / math.sqrt(fan)


def _empty(tensor: Tensor) -> bool:
    if 0 in tensor.shape:
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=3)
        return True
    return False


def kaiming_uniform_(
    tensor: Tensor,
    a: float = 0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: torch.Generator | None = None,
    *,
    module: nn.Module | None = None,
) -> Tensor:
    r"""Fill ``tensor`` from :math:`\mathcal{U}(-b, b)`, as ``torch.nn.init.kaiming_uniform_``.

    .. math::
        b = \text{gain} \sqrt{\frac{3}{\text{fan\_mode}}}, \qquad
        \operatorname{Var}(w) = \frac{\text{gain}^2}{\text{fan\_mode}}
        = \frac{2}{(1 + a^2)\,\text{fan\_mode}} \text{ for (leaky) ReLU}

    He et al., 2015, "Delving deep into rectifiers", https://arxiv.org/abs/1502.01852 .
    ``mode="fan_in"`` keeps the forward variance, ``"fan_out"`` the backward one. Torch's
    defaults (``nonlinearity="leaky_relu"``, ``a=0``) give the ReLU gain. Same values as torch
    for the same ``generator`` state; errors are torch's (the mode message also names ``mode``),
    except that unknown ``mode``/``nonlinearity`` are reported even for zero-element tensors.

    Args:
        tensor: an n-dimensional tensor, n >= 2.
        a: negative slope of the rectifier after this layer (used with ``leaky_relu``).
        mode: ``"fan_in"`` (default) or ``"fan_out"``.
        nonlinearity: a name :func:`calculate_gain` accepts.
        generator: the torch Generator to sample from (default: the global one).
        module: optional layer owning ``tensor``, for exact fans (:func:`fan_in_and_fan_out`).

    Returns:
        ``tensor``, filled under ``torch.no_grad()`` (zero-element tensors: warned, untouched).

    Raises:
        ValueError: for an unknown ``mode`` or ``nonlinearity``, or fewer than 2 dimensions.

    Example:
        >>> w = kaiming_uniform_(torch.empty(256, 512), nonlinearity="relu",
        ...                      generator=torch.Generator().manual_seed(0))
        >>> round(w.var().item() * 512, 2)  # 2 / fan_in
        2.0
    """
    check_tensor(tensor)
    calculate_gain(nonlinearity, a)
    if _empty(tensor):
        return tensor
    std = kaiming_std(tensor, a, mode, nonlinearity, module)
    bound = math.sqrt(3.0) * std
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)


def kaiming_normal_(
    tensor: Tensor,
    a: float = 0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: torch.Generator | None = None,
    *,
    module: nn.Module | None = None,
) -> Tensor:
    r"""Fill ``tensor`` from :math:`\mathcal{N}(0, \sigma^2)`, as ``torch.nn.init.kaiming_normal_``.

    .. math::
        \sigma = \frac{\text{gain}}{\sqrt{\text{fan\_mode}}}

    He et al., 2015, https://arxiv.org/abs/1502.01852 . Same values as torch for the same
    ``generator`` state.

    Args:
        tensor: an n-dimensional tensor, n >= 2.
        a: negative slope of the rectifier after this layer (used with ``leaky_relu``).
        mode: ``"fan_in"`` (default) or ``"fan_out"``.
        nonlinearity: a name :func:`calculate_gain` accepts.
        generator: the torch Generator to sample from (default: the global one).
        module: optional layer owning ``tensor``, for exact fans (:func:`fan_in_and_fan_out`).

    Returns:
        ``tensor``, filled under ``torch.no_grad()`` (zero-element tensors: warned, untouched).

    Raises:
        ValueError: for an unknown ``mode`` or ``nonlinearity``, or fewer than 2 dimensions.

    Example:
        >>> w = kaiming_normal_(torch.empty(256, 512), mode="fan_out", nonlinearity="relu",
        ...                     generator=torch.Generator().manual_seed(0))
        >>> round(w.var().item() * 256, 1)  # 2 / fan_out
        2.0
    """
    check_tensor(tensor)
    calculate_gain(nonlinearity, a)
    if _empty(tensor):
        return tensor
    std = kaiming_std(tensor, a, mode, nonlinearity, module)
    with torch.no_grad():
        return tensor.normal_(0.0, std, generator=generator)
