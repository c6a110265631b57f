"""Truncated normal initialisation with torch's signature (absolute bounds)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_generator_device, check_positive, check_tensor

__all__ = ["trunc_normal_"]

#: Above this acceptance probability, plain rejection of normal draws is used (as torch).
_REJECTION_MIN_MASS = 0.3


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def trunc_normal_(
    tensor: Tensor,
    mean: float = 0.0,
    std: float = 1.0,
    a: float = -2.0,
    b: float = 2.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Fill ``tensor`` from :math:`\mathcal{N}(\mu, \sigma^2)` truncated to :math:`[a, b]`.

    Same signature as ``torch.nn.init.trunc_normal_``: ``a`` and ``b`` are *absolute* bounds,
    not multiples of ``std`` (with ``std=0.02`` the default ``[-2, 2]`` truncates at 100
    standard deviations, i.e. not at all). The density is

    .. math::
        p(x) = \frac{\varphi\big(\frac{x - \mu}{\sigma}\big)}
                    {\sigma \big(\Phi(\beta) - \Phi(\alpha)\big)}, \quad x \in [a, b],
        \qquad \alpha = \frac{a - \mu}{\sigma},\ \beta = \frac{b - \mu}{\sigma}

    Two exact samplers, chosen by the kept mass :math:`Z = \Phi(\beta) - \Phi(\alpha)`:

    - :math:`Z > 0.3`: draw normals and redraw (a fresh full-size draw each round) where out
      of bounds. This is also torch's procedure, so for the same ``generator`` state the values
      equal torch's. Each round reads back whether anything is left (a host sync on GPU).
    - otherwise: inverse CDF in float64, :math:`x = \mu + \sigma\,\Phi^{-1}(u)`,
      :math:`u \sim \mathcal{U}(\Phi(\alpha), \Phi(\beta))`, on the tail side nearer zero
      (so :math:`\Phi` does not round to 1), without loops or syncs. Torch uses rejection from
      a uniform proposal here, so these values differ from torch's.

    Args:
        tensor: an n-dimensional tensor.
        mean: the mean of the normal distribution.
        std: its standard deviation, > 0.
        a: the lower cut-off (absolute), < b.
        b: the upper cut-off (absolute).
        generator: the torch Generator to sample from (default: the global one).

    Returns:
        ``tensor``, filled under ``torch.no_grad()``; meta tensors untouched.

    Raises:
        TypeError: for a non-tensor ``tensor``, a non-numeric ``std`` or a ``generator``
            that is not a ``torch.Generator`` (nor None).
        ValueError: if ``std <= 0`` or ``a >= b`` (torch fails with a ZeroDivisionError or a
            RuntimeError there), or a ``generator`` on another device type than ``tensor``.

    Example:
        >>> w = trunc_normal_(torch.empty(10_000), std=1.0, a=-1.0, b=1.0,
        ...                   generator=torch.Generator().manual_seed(0))
        >>> bool(w.min() >= -1.0 and w.max() <= 1.0)
        True
    """
    check_tensor(tensor, "tensor")
    check_generator_device(generator, (tensor,))
    std = check_positive(std, "std")
    if not a < b:
        raise ValueError(f"the bounds must satisfy a < b, got a={a}, b={b}")
    if tensor.is_meta or tensor.numel() == 0:
        return tensor
    with torch.no_grad():
        if _phi((b - mean) / std) - _phi((a - mean) / std) > _REJECTION_MIN_MASS:
            return _rejection(tensor, mean, std, a, b, generator)
        return _inverse_cdf(tensor, mean, std, a, b, generator)


def _rejection(
    tensor: Tensor, mean: float, std: float, a: float, b: float, gen: torch.Generator | None
) -> Tensor:
    # The bounds rounded to the tensor's dtype, so the test agrees with the stored values.
    lo = torch.tensor(a, dtype=tensor.dtype).item()
    hi = torch.tensor(b, dtype=tensor.dtype).item()
    values = tensor.normal_(mean, std, generator=gen)
    while True:
        outside = (values < lo) | (values > hi)
        if not bool(outside.any()):
            break
        redraw = torch.empty_like(values).normal_(mean, std, generator=gen)
        values = torch.where(outside, redraw, values)
    if values is not tensor:
        tensor.copy_(values)
    return tensor


def _inverse_cdf(
    tensor: Tensor, mean: float, std: float, a: float, b: float, gen: torch.Generator | None
) -> Tensor:
    alpha, beta = (a - mean) / std, (b - mean) / std
    flip = alpha > 0  # work in the lower tail, where Phi keeps its relative precision
    if flip:
        alpha, beta = -beta, -alpha
    lo = torch.special.ndtr(torch.tensor(alpha, dtype=torch.float64)).item()
    hi = torch.special.ndtr(torch.tensor(beta, dtype=torch.float64)).item()
    u = torch.empty(tensor.shape, dtype=torch.float64, device=tensor.device)
    u.uniform_(lo, hi, generator=gen)
    z = torch.special.ndtri(u).clamp_(alpha, beta)
    if flip:
        z.neg_()
    tensor.copy_(z.mul_(std).add_(mean).clamp_(a, b))
    return tensor
