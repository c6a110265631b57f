"""Batch normalization (Ioffe & Szegedy 2015): ``BatchNorm1d/2d/3d`` and ``batch_norm``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from traintech._checks import check_positive_int
from traintech._compat import BatchNormBase
from traintech.norm._stats import (
    blend_factor,
    check_channels,
    check_eps,
    check_momentum,
    is_symbolic,
)

# Speed note: for training and eval, torch's native ``torch.batch_norm`` kernel computes exactly
# the formula below in one fused pass per direction (stats in fp32 for half inputs, running stats
# updated in place). Measured on CPU, 1 thread, fp32, (32, 64, 56, 56), forward + backward: a
# composite of torch ops (var_mean, rsqrt, affine; autograd backward) took 8.0x the native
# kernel's time (672 ms vs 84 ms, shared machine), so the layers call the native kernel after
# doing their own checks; benchmarks/norm.py prints the layer's ratio to torch.


def _check_batch_size(input: Tensor) -> None:
    n = input.shape[0]
    for s in input.shape[2:]:
        n *= s
    if n == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {input.size()}"
        )


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    r"""Batch normalization over all dims but the channel dim 1 (torch's signature).

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    In training (or without running stats) :math:`\mathrm{E}` and :math:`\mathrm{Var}` are the
    batch mean and biased variance per channel, and the running buffers (when given) are updated
    in place: ``running = (1 - momentum) * running + momentum * batch`` with the *unbiased* batch
    variance. In eval the running statistics are used. Paper: Ioffe & Szegedy 2015,
    https://arxiv.org/abs/1502.03167.

    Args:
        input: ``(N, C, *)`` tensor.
        running_mean: ``(C,)`` buffer or None.
        running_var: ``(C,)`` buffer or None.
        weight: ``(C,)`` scale :math:`\gamma` or None.
        bias: ``(C,)`` shift :math:`\beta` or None.
        training: use batch statistics (and update the running ones).
        momentum: blend factor of the running-statistic update, in [0, 1].
        eps: added to the variance, > 0.

    Returns:
        The normalized tensor, same shape and dtype as ``input``.

    Example:
        >>> x = torch.tensor([[1.0], [3.0]])
        >>> batch_norm(x, None, None, training=True).squeeze(1).tolist()
        [-0.99999499..., 0.99999499...]
    """
    check_eps(eps)
    check_momentum(momentum, allow_none=False)
    if is_symbolic(input):  # torch.fx.symbolic_trace: torch's op checks at run time
        pass
    elif input.dim() < 2 and input.numel() > 0:  # torch passes an empty 1-D input through
        raise ValueError(f"batch_norm: expected input of shape (N, C, *), got {tuple(input.shape)}")
    elif training:
        _check_batch_size(input)
    return torch.batch_norm(
        input, weight, bias, running_mean, running_var, training, momentum, eps, False
    )


class _BatchNorm(BatchNormBase):
    """Our checks on top of torch's BatchNorm (subclasses fix the accepted ranks).

    Parameters, buffers, ``state_dict`` versioning, ``extra_repr`` and the forward are torch's
    (``torch.nn.modules.batchnorm._BatchNorm``); we add argument checks at construction and an
    input check (rank, channel count) with a message naming the layer and the shape. The input
    check is plain Python on the shape, so ``torch.compile``/``torch.export`` trace it (it becomes
    a shape guard); under ``torch.fx.symbolic_trace`` (a ``Proxy`` has no shape) it is skipped.
    """

    _ranks: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        check_positive_int(num_features, "num_features")
        check_eps(eps)
        check_momentum(momentum)
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )

    def _check_input_dim(self, input: Tensor) -> None:
        if is_symbolic(input):
            return
        if input.dim() not in self._ranks:
            want = " or ".join(f"{r}D" for r in self._ranks)
            raise ValueError(
                f"{type(self).__name__}: expected {want} input (got {input.dim()}D input "
                f"of shape {tuple(input.shape)})"
            )
        check_channels(input, self.num_features, type(self).__name__)
        if self._use_batch_stats():
            _check_batch_size(input)  # before torch's forward increments the batch counter

    def _blend_factor(self) -> float:
        """Increment the batch counter (training with tracking) and return the blend factor."""
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            return blend_factor(self.momentum, self.num_batches_tracked)
        return 0.0 if self.momentum is None else self.momentum

    def _use_batch_stats(self) -> bool:
        return self.training or (self.running_mean is None and self.running_var is None)


class BatchNorm1d(_BatchNorm, nn.BatchNorm1d):
    r"""Batch normalization over a ``(N, C)`` or ``(N, C, L)`` input; a ``torch.nn.BatchNorm1d``.

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    statistics per channel over ``N`` (and ``L``); training uses the batch's biased variance and
    updates the running estimate with the unbiased one (``momentum=None``: cumulative average);
    eval uses the running estimate. Paper: https://arxiv.org/abs/1502.03167.

    Args:
        num_features: number of channels ``C``.
        eps: added to the variance, > 0.
        momentum: running-stat blend factor in [0, 1], or None for a cumulative average.
        affine: learn a per-channel scale and shift.
        track_running_stats: keep running statistics (else batch stats in eval too).
        device: device of parameters and buffers.
        dtype: dtype of parameters and buffers.
        bias: learn the shift (when ``affine``).

    Example:
        >>> bn = BatchNorm1d(1)
        >>> bn(torch.tensor([[1.0], [3.0]])).squeeze(1).tolist()
        [-0.99999499..., 0.99999499...]
        >>> bn.running_mean.tolist(), bn.running_var.tolist()
        ([0.2000000...], [1.1000000...])
    """

    _ranks = (2, 3)


class BatchNorm2d(_BatchNorm, nn.BatchNorm2d):
    r"""Batch normalization over a ``(N, C, H, W)`` input; a ``torch.nn.BatchNorm2d``.

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    statistics per channel over ``(N, H, W)``; see :class:`BatchNorm1d` for the arguments.
    Paper: https://arxiv.org/abs/1502.03167.

    Example:
        >>> bn = BatchNorm2d(1).eval()
        >>> bn(torch.full((1, 1, 1, 2), 2.0)).flatten().tolist()
        [1.9999899..., 1.9999899...]
    """

    _ranks = (4,)


class BatchNorm3d(_BatchNorm, nn.BatchNorm3d):
    r"""Batch normalization over a ``(N, C, D, H, W)`` input; a ``torch.nn.BatchNorm3d``.

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    statistics per channel over ``(N, D, H, W)``; see :class:`BatchNorm1d` for the arguments.
    Paper: https://arxiv.org/abs/1502.03167.

    Example:
        >>> bn = BatchNorm3d(2)
        >>> y = bn(torch.arange(8.0).reshape(2, 2, 2, 1, 1))
        >>> round(y[:, 0].mean().item(), 6), round(y[:, 0].var(correction=0).item(), 4)
        (0.0, 1.0)
    """

    _ranks = (5,)
