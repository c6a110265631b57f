"""Instance normalization (Ulyanov et al. 2016): ``InstanceNorm1d/2d/3d`` and ``instance_norm``."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from traintech._checks import check_positive_int
from traintech._compat import InstanceNormBase
from traintech.norm._stats import check_eps, check_momentum, is_symbolic

# Speed note: torch's native ``torch.instance_norm`` reshapes to one batch-norm "channel" per
# (sample, channel) and runs the fused batch-norm kernel; that is the computation we want, so the
# layers call it after our own checks (same measurement as in _batch_norm.py).


def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    r"""Instance normalization of an ``(N, C, *)`` input (torch's signature).

    .. math::
        y = \frac{x - \mathrm{E}_{n,c}[x]}{\sqrt{\mathrm{Var}_{n,c}[x] + \epsilon}}
            \cdot \gamma_c + \beta_c

    with the mean and biased variance of each (sample, channel) over the spatial dims. With
    running buffers and ``use_input_stats``, they are updated with the batch average of the
    per-instance statistics (unbiased variance). Paper: Ulyanov, Vedaldi & Lempitsky 2016,
    https://arxiv.org/abs/1607.08022.

    Args:
        input: ``(N, C, *)`` tensor with at least one spatial dim.
        running_mean: ``(C,)`` buffer or None.
        running_var: ``(C,)`` buffer or None.
        weight: per-channel scale or None.
        bias: per-channel shift or None.
        use_input_stats: normalize with the instance statistics (else the running ones).
        momentum: running-stat blend factor in [0, 1].
        eps: added to the variance, > 0.

    Returns:
        The normalized tensor, same shape and dtype as ``input``.

    Example:
        >>> instance_norm(torch.tensor([[[1.0, 3.0]]])).flatten().tolist()
        [-0.99999499..., 0.99999499...]
    """
    check_eps(eps)
    check_momentum(momentum, allow_none=False)
    if not is_symbolic(input) and input.dim() < 3:
        raise ValueError(
            f"instance_norm: expected input of shape (N, C, L, *), got {tuple(input.shape)}"
        )
    if use_input_stats and not is_symbolic(input):
        _check_spatial_size(input)
    return torch.instance_norm(
        input, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, False
    )


def _check_spatial_size(input: Tensor) -> None:
    n = 1
    for s in input.shape[2:]:
        n *= s
    if n == 1:
        raise ValueError(
            f"Expected more than 1 spatial element when training, got input size {input.size()}"
        )


class _InstanceNorm(InstanceNormBase):
    """Our checks on top of torch's InstanceNorm over ``(N, C, *)`` or unbatched ``(C, *)``.

    Parameters, buffers, ``state_dict`` handling (including torch's report of pre-0.4 running
    stats) and ``extra_repr`` are torch's (``torch.nn.modules.instancenorm._InstanceNorm``).
    """

    _spatial_dims = 1

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        check_positive_int(num_features, "num_features")
        check_eps(eps)
        check_momentum(momentum)
        super().__init__(
            num_features,
            eps,
            momentum,  # type: ignore[arg-type]
            affine,
            track_running_stats,
            device,
            dtype,
            bias=bias,
        )

    def _get_no_batch_dim(self) -> int:
        return self._spatial_dims + 1

    def _check_input_dim(self, input: Tensor) -> None:
        no_batch = self._spatial_dims + 1
        if input.dim() not in (no_batch, no_batch + 1):
            raise ValueError(
                f"{type(self).__name__}: expected {no_batch}D or {no_batch + 1}D input "
                f"(got {input.dim()}D input of shape {tuple(input.shape)})"
            )

    def forward(self, input: Tensor) -> Tensor:
        """Normalize each (sample, channel) over its spatial dims."""
        if is_symbolic(input):
            # torch.fx.symbolic_trace: no shape to branch on; a batched input is assumed.
            return F.instance_norm(
                input,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                self.training or not self.track_running_stats,
                self.momentum if self.momentum is not None else 0.0,
                self.eps,
            )
        no_batch = self._spatial_dims + 1
        self._check_input_dim(input)
        feature_dim = input.dim() - no_batch
        if input.shape[feature_dim] != self.num_features:
            if self.affine or self.track_running_stats:
                raise ValueError(
                    f"{type(self).__name__}: expected input's size at dim={feature_dim} to match "
                    f"num_features ({self.num_features}), got input of shape {tuple(input.shape)}"
                )
            warnings.warn(
                f"input's size at dim={feature_dim} does not match num_features. "
                "You can silence this warning by not passing in num_features, "
                "which is not used because affine=False",
                stacklevel=2,
            )
        batched = input if input.dim() == no_batch + 1 else input.unsqueeze(0)
        use_input_stats = self.training or not self.track_running_stats
        if use_input_stats:
            _check_spatial_size(batched)
        out = torch.instance_norm(
            batched,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            use_input_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
            False,
        )
        return out if input.dim() == no_batch + 1 else out.squeeze(0)


class InstanceNorm1d(_InstanceNorm, nn.InstanceNorm1d):
    r"""Instance normalization of ``(N, C, L)`` or ``(C, L)``: torch's class.

    .. math::
        y = \frac{x - \mathrm{E}_{n,c}[x]}{\sqrt{\mathrm{Var}_{n,c}[x] + \epsilon}}
            \cdot \gamma_c + \beta_c

    statistics per sample and channel over ``L``. Defaults ``affine=False`` and
    ``track_running_stats=False`` (as torch); with tracking, eval uses the running statistics.
    A channel count that differs from ``num_features`` warns when the layer has neither affine
    parameters nor running stats (torch's behaviour) and raises otherwise.
    Paper: https://arxiv.org/abs/1607.08022.

    Args:
        num_features: number of channels ``C``.
        eps: added to the variance, > 0.
        momentum: running-stat blend factor in [0, 1] (None: no update).
        affine: learn a per-channel scale and shift.
        track_running_stats: keep running statistics for eval.
        device: device of parameters and buffers.
        dtype: dtype of parameters and buffers.
        bias: learn the shift (when ``affine``).

    Example:
        >>> InstanceNorm1d(1)(torch.tensor([[[1.0, 3.0]]])).flatten().tolist()
        [-0.99999499..., 0.99999499...]
    """

    _spatial_dims = 1


class InstanceNorm2d(_InstanceNorm, nn.InstanceNorm2d):
    r"""Instance normalization of ``(N, C, H, W)`` or ``(C, H, W)``: torch's class.

    .. math::
        y = \frac{x - \mathrm{E}_{n,c}[x]}{\sqrt{\mathrm{Var}_{n,c}[x] + \epsilon}}
            \cdot \gamma_c + \beta_c

    statistics per sample and channel over ``(H, W)``; see :class:`InstanceNorm1d`.
    Paper: https://arxiv.org/abs/1607.08022.

    Example:
        >>> InstanceNorm2d(1)(torch.tensor([[[[1.0, 3.0]]]])).flatten().tolist()
        [-0.99999499..., 0.99999499...]
    """

    _spatial_dims = 2


class InstanceNorm3d(_InstanceNorm, nn.InstanceNorm3d):
    r"""Instance normalization of ``(N, C, D, H, W)`` or ``(C, D, H, W)``: torch's class.

    .. math::
        y = \frac{x - \mathrm{E}_{n,c}[x]}{\sqrt{\mathrm{Var}_{n,c}[x] + \epsilon}}
            \cdot \gamma_c + \beta_c

    statistics per sample and channel over ``(D, H, W)``; see :class:`InstanceNorm1d`.
    Paper: https://arxiv.org/abs/1607.08022.

    Example:
        >>> InstanceNorm3d(1)(torch.tensor([[[[[1.0, 3.0]]]]])).flatten().tolist()
        [-0.99999499..., 0.99999499...]
    """

    _spatial_dims = 3
