"""The fan-based torch twins: Xavier/Glorot (Glorot & Bengio 2010), Kaiming/He (He et al. 2015).

Both draw from a zero-mean uniform or normal distribution whose variance is a gain squared over
a fan (:mod:`._fans_and_gain`); ``*_std`` give the standard deviation each targets, which
:func:`init_model` reports.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from .._checks import check_generator_device, check_tensor
from ._fans_and_gain import calculate_gain, check_gain, correct_fan, fan_in_and_fan_out

__all__ = [
    "kaiming_normal_",
    "kaiming_std",
    "kaiming_uniform_",
    "xavier_normal_",
    "xavier_std",
    "xavier_uniform_",
]


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
        TypeError: for a non-tensor ``tensor`` or a ``generator`` that is not a
            ``torch.Generator`` (nor None).
        ValueError: for fewer than 2 dimensions or a negative ``gain``; or a ``generator``
            on another device type than ``tensor``.

    Example:
        >>> w = xavier_uniform_(torch.empty(300, 200), generator=torch.Generator().manual_seed(0))
        >>> round(w.abs().max().item(), 2)  # the bound is sqrt(6 / 500)
        0.11
    """
    check_tensor(tensor, "tensor")
    check_generator_device(generator, (tensor,))
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
        TypeError: for a non-tensor ``tensor`` or a ``generator`` that is not a
            ``torch.Generator`` (nor None).
        ValueError: for fewer than 2 dimensions or a negative ``gain``; or a ``generator``
            on another device type than ``tensor``.

    Example:
        >>> w = xavier_normal_(torch.empty(400, 400), generator=torch.Generator().manual_seed(0))
        >>> round(w.std().item(), 3)  # sqrt(2 / 800) = 0.05
        0.05
    """
    check_tensor(tensor, "tensor")
    check_generator_device(generator, (tensor,))
    check_gain(gain)
    std = xavier_std(tensor, gain, module)
    with torch.no_grad():
        return tensor.normal_(0.0, std, generator=generator)


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
        TypeError: for a non-tensor ``tensor`` or a ``generator`` that is not a
            ``torch.Generator`` (nor None).
        ValueError: for an unknown ``mode`` or ``nonlinearity``, fewer than 2 dimensions, or a
            ``generator`` on another device type than ``tensor``.

    Example:
        >>> w = kaiming_uniform_(torch.empty(256, 512), nonlinearity="relu",
        ...                      generator=torch.Generator().manual_seed(0))
        >>> round(w.var().item() * 512, 2)  # 2 / fan_in
        2.0
    """
    check_tensor(tensor, "tensor")
    check_generator_device(generator, (tensor,))
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
        TypeError: for a non-tensor ``tensor`` or a ``generator`` that is not a
            ``torch.Generator`` (nor None).
        ValueError: for an unknown ``mode`` or ``nonlinearity``, fewer than 2 dimensions, or a
            ``generator`` on another device type than ``tensor``.

    Example:
        >>> w = kaiming_normal_(torch.empty(256, 512), mode="fan_out", nonlinearity="relu",
        ...                     generator=torch.Generator().manual_seed(0))
        >>> round(w.var().item() * 256, 1)  # 2 / fan_out
        2.0
    """
    check_tensor(tensor, "tensor")
    check_generator_device(generator, (tensor,))
    calculate_gain(nonlinearity, a)
    if _empty(tensor):
        return tensor
    std = kaiming_std(tensor, a, mode, nonlinearity, module)
    with torch.no_grad():
        return tensor.normal_(0.0, std, generator=generator)
