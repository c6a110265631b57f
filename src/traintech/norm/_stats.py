"""Shared numerics of every norm layer: argument checks, statistics, running-stat updates.

Every layer in :mod:`traintech.norm` computes its statistics through this module, so the numeric
choices are made once: statistics of ``bfloat16``/``float16`` inputs are accumulated in
``float32`` (and results cast back at the end), a variance is clamped at 0 before ``eps`` is added,
and every ``eps`` is a named keyword with torch's default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics of ``dtype`` inputs are computed in (``float32`` for half types)."""
    return torch.float32 if dtype in _HALF_DTYPES else dtype


def check_eps(eps: float, name: str = "eps") -> float:
    """Return ``eps`` as a float after checking it is a finite number greater than 0."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(eps).__name__} ({eps!r})")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {eps}; use e.g. {name}=1e-5")
    return float(eps)


def check_momentum(momentum: float | None, *, allow_none: bool = True) -> float | None:
    """Return ``momentum`` after checking it lies in [0, 1] (or is None where allowed)."""
    if momentum is None:
        if allow_none:
            return None
        raise TypeError("momentum must be a float in [0, 1], got None")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
        raise TypeError(f"momentum must be a float in [0, 1] or None, got {momentum!r}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(
            f"momentum must lie in [0, 1] (or be None for a cumulative average), got {momentum}"
        )
    return float(momentum)


def is_symbolic(input: Any) -> bool:
    """Whether ``input`` is a ``torch.fx.Proxy`` (``torch.fx.symbolic_trace``: no concrete shape).

    Shape checks are skipped for a Proxy (the traced graph calls torch's op, which checks at run
    time); under ``torch.compile``/``torch.export`` inputs are fake tensors with shapes, so the
    checks run and become guards.
    """
    return isinstance(input, torch.fx.Proxy)


def as_shape(normalized_shape: int | Sequence[int], name: str = "normalized_shape") -> tuple:
    """Return ``normalized_shape`` as a tuple of positive ints (an int is a 1-tuple)."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"{name} must be positive ints, got {normalized_shape!r}")
    return shape


def check_trailing_shape(input: Tensor, normalized_shape: tuple, name: str) -> None:
    """Raise ValueError unless ``input``'s last dims equal ``normalized_shape``."""
    if is_symbolic(input):
        return
    k = len(normalized_shape)
    if input.dim() < k or tuple(input.shape[input.dim() - k :]) != normalized_shape:
        raise ValueError(
            f"{name}: expected input with shape [*, {', '.join(map(str, normalized_shape))}] "
            f"(normalized_shape={normalized_shape}), got input of shape {tuple(input.shape)}"
        )


def check_channels(input: Tensor, num_features: int, name: str, arg: str = "num_features") -> None:
    """Raise ValueError unless ``input.shape[1] == num_features`` (skipped for an FX Proxy)."""
    if is_symbolic(input):
        return
    if input.dim() < 2 or input.shape[1] != num_features:
        raise ValueError(
            f"{name}: expected input's size at dim=1 to match {arg} ({num_features}), "
            f"got input of shape {tuple(input.shape)}"
        )


def moments(x: Tensor, dims: Sequence[int], keepdim: bool = False) -> tuple[Tensor, Tensor]:
    r"""Mean and biased variance of ``x`` over ``dims``, in :func:`stat_dtype` of ``x``.

    .. math::
        \mu = \frac{1}{n}\sum_i x_i, \qquad
        \sigma^2 = \max\Big(0, \frac{1}{n}\sum_i (x_i-\mu)^2\Big)

    Args:
        x: input tensor.
        dims: dimensions to reduce.
        keepdim: keep the reduced dimensions with size 1.

    Returns:
        ``(mean, var)``, both in ``float32`` for half inputs.

    Example:
        >>> m, v = moments(torch.tensor([[1.0, 3.0]]), dims=[1])
        >>> m.tolist(), v.tolist()
        ([2.0], [1.0])
    """
    xs = x.to(stat_dtype(x.dtype))
    var, mean = torch.var_mean(xs, dim=list(dims), correction=0, keepdim=keepdim)
    return mean, var.clamp_min(0.0)


def rstd_from_var(var: Tensor, eps: float) -> Tensor:
    r"""``1 / sqrt(max(var, 0) + eps)``."""
    return torch.rsqrt(var.clamp_min(0.0) + eps)


def update_running_stats_(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    count: int | None,
    factor: float,
) -> None:
    r"""Blend batch statistics into running statistics in place, as torch's BatchNorm does.

    .. math::
        \hat\mu \leftarrow (1-f)\,\hat\mu + f\,\mu, \qquad
        \hat\sigma^2 \leftarrow (1-f)\,\hat\sigma^2 + f\,\sigma^2\,\frac{n}{n-1}

    where :math:`\sigma^2` is the biased batch variance over :math:`n` values (the running
    estimate is unbiased, the normalization uses the biased one).

    Args:
        running_mean: running mean buffer, updated in place.
        running_var: running variance buffer, updated in place.
        mean: batch mean (any float dtype).
        var: biased batch variance.
        count: number of values each statistic was taken over (``n``); None when ``var`` is
            already the unbiased estimate.
        factor: the blend factor ``f`` (momentum, or ``1/num_batches`` for a cumulative average).
    """
    with torch.no_grad():
        unbiased = var if count is None else var * (count / max(count - 1, 1))
        running_mean.lerp_(mean.detach().to(running_mean.dtype), factor)
        running_var.lerp_(unbiased.detach().to(running_var.dtype), factor)


def blend_factor(momentum: float | None, num_batches_tracked: Tensor | None) -> float:
    """The running-stat blend factor after ``num_batches_tracked`` was incremented.

    ``momentum=None`` gives a cumulative average (``1 / num_batches_tracked``); reading the
    counter is a host read of a CPU/GPU scalar, done only in that mode (as torch does).
    """
    if momentum is not None:
        return momentum
    if num_batches_tracked is None:
        return 0.0
    return 1.0 / float(num_batches_tracked)


def scale_shift(
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    var: Tensor,
    eps: float,
) -> tuple[Tensor, Tensor]:
    r"""Per-channel ``(scale, shift)`` with ``y = x * scale + shift`` normalizing by fixed stats.

    .. math::
        s = \frac{\gamma}{\sqrt{\max(\sigma^2, 0) + \epsilon}}, \qquad t = \beta - \mu\, s
    """
    scale = rstd_from_var(var, eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def normalize(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    channel_dim: int = 1,
) -> Tensor:
    r"""``(x - mean) / sqrt(var + eps) * weight + bias`` computed in :func:`stat_dtype`.

    ``mean``/``var`` broadcast against ``x``; ``weight``/``bias`` are per-channel vectors laid
    along ``channel_dim``. The result is cast back to ``x.dtype``.

    .. math::
        y = \frac{x - \mu}{\sqrt{\max(\sigma^2, 0) + \epsilon}} \cdot \gamma + \beta
    """
    xs = x.to(stat_dtype(x.dtype))
    view = [1] * x.dim()
    view[channel_dim] = -1
    scale = rstd_from_var(var, eps)
    if weight is not None:
        scale = scale * weight.to(xs.dtype).view(view)
    y = (xs - mean) * scale
    if bias is not None:
        y = y + bias.to(xs.dtype).view(view)
    return y.to(x.dtype)
