"""Batch normalization (Ioffe & Szegedy 2015): ``BatchNorm1d/2d/3d`` and ``batch_norm``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from traintech.norm._affine import register_affine
from traintech.norm._stats import (
    blend_factor,
    check_channels,
    check_eps,
    check_momentum,
    check_positive_int,
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
    if input.dim() < 2:
        raise ValueError(f"batch_norm: expected input of shape (N, C, *), got {tuple(input.shape)}")
    if training:
        _check_batch_size(input)
    return torch.batch_norm(
        input, weight, bias, running_mean, running_var, training, momentum, eps, False
    )


class _NormBase(nn.Module):
    """Parameters, buffers, state_dict versioning and checks shared by BatchNorm and InstanceNorm.

    Same constructor, attributes, buffers and ``extra_repr`` as ``torch.nn`` (``_version = 2``:
    version-1 checkpoints lack ``num_batches_tracked``, which loads as 0).
    """

    _version = 2
    num_features: int
    eps: float
    momentum: float | None
    affine: bool
    track_running_stats: bool
    running_mean: Tensor | None
    running_var: Tensor | None
    num_batches_tracked: Tensor | None

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
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.weight: nn.Parameter | None
        self.bias: nn.Parameter | None
        register_affine(self, num_features, affine=affine, bias=bias, device=device, dtype=dtype)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Running mean to 0, running variance to 1, batch counter to 0."""
        if self.running_mean is not None and self.running_var is not None:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics, the weight to 1 and the bias to 0."""
        self.reset_running_stats()
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        """Same text as torch's."""
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            # Version 2 added num_batches_tracked; older checkpoints start the count at 0.
            nbt = self.num_batches_tracked
            usable = nbt is not None and nbt.device.type != "meta"
            state_dict[key] = nbt if usable else torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class _BatchNorm(_NormBase):
    """BatchNorm over ``(N, C, *)`` inputs; subclasses fix the accepted ranks."""

    _ranks: tuple[int, ...] = ()

    def _check_input(self, input: Tensor) -> None:
        if input.dim() not in self._ranks:
            want = " or ".join(f"{r}D" for r in self._ranks)
            raise ValueError(
                f"{type(self).__name__}: expected {want} input (got {input.dim()}D input "
                f"of shape {tuple(input.shape)})"
            )
        check_channels(input, self.num_features, type(self).__name__)

    def _blend_factor(self) -> float:
        """Increment the batch counter (training with tracking) and return the blend factor."""
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            return blend_factor(self.momentum, self.num_batches_tracked)
        return 0.0 if self.momentum is None else self.momentum

    def _use_batch_stats(self) -> bool:
        return self.training or (self.running_mean is None and self.running_var is None)

    def forward(self, input: Tensor) -> Tensor:
        """Normalize ``input`` with batch (training) or running (eval) statistics."""
        self._check_input(input)
        use_batch = self._use_batch_stats()
        if use_batch:
            _check_batch_size(input)
        factor = self._blend_factor()
        track = not self.training or self.track_running_stats
        return torch.batch_norm(
            input,
            self.weight,
            self.bias,
            self.running_mean if track else None,
            self.running_var if track else None,
            use_batch,
            factor,
            self.eps,
            False,
        )


class BatchNorm1d(_BatchNorm):
    r"""Batch normalization over a ``(N, C)`` or ``(N, C, L)`` input, drop-in for torch's.

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


class BatchNorm2d(_BatchNorm):
    r"""Batch normalization over a ``(N, C, H, W)`` input, drop-in for ``torch.nn.BatchNorm2d``.

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


class BatchNorm3d(_BatchNorm):
    r"""Batch normalization over a ``(N, C, D, H, W)`` input, drop-in for torch's.

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
