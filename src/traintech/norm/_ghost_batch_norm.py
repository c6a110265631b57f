"""Ghost (virtual-batch) BatchNorm, Hoffer, Hubara & Soudry 2017, arXiv:1705.08741."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from traintech._checks import check_positive_int
from traintech.norm._batch_norm import _BatchNorm, _check_batch_size
from traintech.norm._stats import (
    check_eps,
    check_momentum,
    is_symbolic,
    moments,
    normalize,
    update_running_stats_,
)


def chunk_sizes(batch_size: int, virtual_batch_size: int) -> list[int]:
    """Sizes of the virtual batches a batch of ``batch_size`` samples is split into.

    Full chunks of ``virtual_batch_size``; a remainder of 2 or more samples is its own (smaller)
    chunk; a remainder of exactly 1 sample is merged into the previous chunk (one sample alone
    has no batch statistics when the input has no spatial dims).

    Example:
        >>> chunk_sizes(10, 4), chunk_sizes(9, 4), chunk_sizes(3, 4)
        ([4, 4, 2], [4, 5], [3])
    """
    full, rest = divmod(batch_size, virtual_batch_size)
    if full == 0:
        return [batch_size]
    if rest == 1:
        return [virtual_batch_size] * (full - 1) + [virtual_batch_size + 1]
    return [virtual_batch_size] * full + ([rest] if rest else [])


def ghost_batch_norm(
    input: Tensor,
    virtual_batch_size: int,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    r"""BatchNorm with statistics over virtual batches of ``virtual_batch_size`` samples.

    In training, the batch is split along dim 0 into chunks (see :func:`chunk_sizes`) and each
    chunk :math:`k` is normalized with its own per-channel mean and biased variance:

    .. math::
        y = \frac{x - \mu_k}{\sqrt{\sigma_k^2 + \epsilon}} \cdot \gamma + \beta

    The running statistics (when given) get one update per call with the size-weighted average
    over chunks of the chunk means and of the chunk *unbiased* variances:
    ``running = (1 - momentum) * running + momentum * avg``. In eval (``training=False``) this is
    :func:`traintech.norm.functional.batch_norm` with the running statistics. The equal-size chunks
    are computed in one vectorised reduction, the (at most one) odd-size chunk in a second.
    Paper: Hoffer, Hubara & Soudry 2017, https://arxiv.org/abs/1705.08741.

    Args:
        input: ``(N, C, *)`` tensor.
        virtual_batch_size: samples per virtual batch, >= 1.
        running_mean: ``(C,)`` buffer updated in training, or None.
        running_var: ``(C,)`` buffer updated in training, or None.
        weight: ``(C,)`` scale or None.
        bias: ``(C,)`` shift or None.
        training: use virtual-batch statistics (else the running statistics).
        momentum: running-stat blend factor in [0, 1].
        eps: added to the variance, > 0.

    Returns:
        The normalized tensor, same shape and dtype as ``input``.

    Example:
        >>> x = torch.tensor([[0.0], [2.0], [10.0], [14.0]])
        >>> ghost_batch_norm(x, 2).flatten().round(decimals=4).tolist()
        [-1.0, 1.0, -1.0, 1.0]
    """
    check_positive_int(virtual_batch_size, "virtual_batch_size")
    check_eps(eps)
    check_momentum(momentum, allow_none=False)
    if input.dim() < 2:
        raise ValueError(
            f"ghost_batch_norm: expected input of shape (N, C, *), got {tuple(input.shape)}"
        )
    if not training:
        training_stats = running_mean is None or running_var is None
        return torch.batch_norm(
            input, weight, bias, running_mean, running_var, training_stats, momentum, eps, False
        )
    sizes = chunk_sizes(input.shape[0], virtual_batch_size)
    for size in set(sizes):
        _check_batch_size(input[:size])
    spatial = list(range(3, input.dim() + 1))
    first = sizes[0]
    n_equal = sum(1 for s in sizes if s == first)
    body = input[: n_equal * first].reshape(n_equal, first, *input.shape[1:])
    mean_b, var_b = moments(body, [1, *spatial], keepdim=True)
    out_b = normalize(body, mean_b, var_b, weight, bias, eps, channel_dim=2)
    outs = [out_b.reshape(n_equal * first, *input.shape[1:])]
    per_value = 1
    for s in input.shape[2:]:
        per_value *= s
    stats = [(mean_b.reshape(n_equal, -1), var_b.reshape(n_equal, -1), first)]
    if len(sizes) > n_equal:
        tail = input[n_equal * first :]
        mean_t, var_t = moments(tail, [0, *range(2, input.dim())], keepdim=True)
        outs.append(normalize(tail, mean_t, var_t, weight, bias, eps))
        stats.append((mean_t.reshape(1, -1), var_t.reshape(1, -1), sizes[-1]))
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            total = float(input.shape[0])
            avg_mean = torch.zeros_like(stats[0][0][0])
            avg_var = torch.zeros_like(stats[0][1][0])
            for m, v, n in stats:
                count = n * per_value
                avg_mean += m.sum(0) * (n / total)
                avg_var += v.sum(0) * (n / total * count / max(count - 1, 1))
            update_running_stats_(running_mean, running_var, avg_mean, avg_var, None, momentum)
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


# The virtual batches depend on the batch size, which torch.fx.symbolic_trace does not know: FX
# records a call of this function (run with real tensors) instead of tracing into it.
torch.fx.wrap("ghost_batch_norm")


class GhostBatchNorm(_BatchNorm):
    r"""Ghost BatchNorm: training statistics over virtual batches, eval exactly BatchNorm.

    .. math::
        y = \frac{x - \mu_k}{\sqrt{\sigma_k^2 + \epsilon}} \cdot \gamma + \beta

    where :math:`\mu_k, \sigma_k^2` are the per-channel mean and biased variance of the virtual
    batch :math:`k` (``virtual_batch_size`` samples of the batch; a 1-sample remainder is merged
    into the previous chunk, see :func:`chunk_sizes`). Large-batch training regains the
    regularizing noise of small-batch BatchNorm (Hoffer, Hubara & Soudry 2017,
    https://arxiv.org/abs/1705.08741); tabular models (TabNet) use it with virtual batches of
    128-256. Running statistics get one update per forward (size-weighted average of the chunk
    means and unbiased chunk variances; ``momentum=None``: cumulative average over calls).
    Accepts any ``(N, C, *)`` input; parameters, buffers and state_dict are BatchNorm's, so a
    BatchNorm checkpoint loads into it and back.

    Args:
        num_features: number of channels ``C``.
        virtual_batch_size: samples per virtual batch, >= 1.
        eps: added to the variance, > 0.
        momentum: running-stat blend factor in [0, 1], or None for a cumulative average.
        affine: learn a per-channel scale and shift.
        track_running_stats: keep running statistics for eval.
        device: device of parameters and buffers.
        dtype: dtype of parameters and buffers.
        bias: learn the shift (when ``affine``).

    Example:
        >>> gbn = GhostBatchNorm(1, virtual_batch_size=2)
        >>> x = torch.tensor([[0.0], [2.0], [10.0], [14.0]])
        >>> gbn(x).flatten().round(decimals=4).tolist()
        [-1.0, 1.0, -1.0, 1.0]
    """

    _ranks = tuple(range(2, 9))

    def __init__(
        self,
        num_features: int,
        virtual_batch_size: int = 128,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        check_positive_int(virtual_batch_size, "virtual_batch_size")
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )
        self.virtual_batch_size = virtual_batch_size

    def forward(self, input: Tensor) -> Tensor:
        """Normalize with virtual-batch statistics (training) or running statistics (eval)."""
        if not self.training:
            return super().forward(input)
        self._check_input_dim(input)
        if not is_symbolic(input):
            for size in set(chunk_sizes(input.shape[0], self.virtual_batch_size)):
                _check_batch_size(input[:size])
        factor = self._blend_factor()
        return ghost_batch_norm(
            input,
            self.virtual_batch_size,
            self.running_mean if self.track_running_stats else None,
            self.running_var if self.track_running_stats else None,
            self.weight,
            self.bias,
            True,
            factor,
            self.eps,
        )

    def extra_repr(self) -> str:
        """BatchNorm's text plus ``virtual_batch_size``."""
        return f"{super().extra_repr()}, virtual_batch_size={self.virtual_batch_size}"
