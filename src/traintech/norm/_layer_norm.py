"""Layer normalization (Ba et al. 2016): ``LayerNorm`` and ``layer_norm``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from traintech._checks import check_positive_int
from traintech.norm._affine import register_affine
from traintech.norm._stats import (
    as_shape,
    check_channels,
    check_eps,
    check_trailing_shape,
    is_symbolic,
)

# Speed note: torch's native ``torch.layer_norm`` fuses statistics, normalization and affine in
# one pass forward and two in backward (stats in fp32 for half inputs) and is the fastest path
# for this exact computation on CPU: measured at (8, 512, 1024), fp32, 1 thread, forward +
# backward, a composite of torch ops took 8.4x its time (669 ms vs 80 ms, shared machine), so
# ``layer_norm`` calls it after our checks. Our own kernels are where torch's path is slow
# (RMSNorm, the fused add + RMSNorm).


def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    r"""Layer normalization over the last ``len(normalized_shape)`` dims (torch's signature).

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    with the mean and biased variance over the trailing ``normalized_shape`` dims of each sample.
    Paper: Ba, Kiros & Hinton 2016, https://arxiv.org/abs/1607.06450.

    Args:
        input: ``(*, *normalized_shape)`` tensor.
        normalized_shape: trailing shape to normalize over.
        weight: elementwise scale of shape ``normalized_shape`` or None.
        bias: elementwise shift of shape ``normalized_shape`` or None.
        eps: added to the variance, > 0.

    Returns:
        The normalized tensor, same shape and dtype as ``input``.

    Example:
        >>> layer_norm(torch.tensor([[1.0, 3.0]]), (2,)).tolist()
        [[-0.99999499..., 0.99999499...]]
    """
    shape = as_shape(normalized_shape)
    check_eps(eps)
    check_trailing_shape(input, shape, "layer_norm")
    return F.layer_norm(input, shape, weight, bias, eps)


class LayerNorm(nn.LayerNorm):
    r"""Layer normalization: a ``torch.nn.LayerNorm`` (subclass) with clearer errors.

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    over the last ``len(normalized_shape)`` dims, identical in training and eval. Parameters,
    ``state_dict``, ``extra_repr`` and the kernel (``F.layer_norm``) are torch's; we check the
    arguments at construction and the input's trailing shape (``ValueError`` naming both shapes).
    Paper: https://arxiv.org/abs/1607.06450.

    Args:
        normalized_shape: trailing shape to normalize over (an int means the last dim).
        eps: added to the variance, > 0.
        elementwise_affine: learn an elementwise scale (and shift).
        bias: learn the shift (when ``elementwise_affine``).
        device: device of the parameters.
        dtype: dtype of the parameters.

    Example:
        >>> LayerNorm(2)(torch.tensor([[1.0, 3.0]])).tolist()
        [[-0.99999499..., 0.99999499...]]
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        shape = as_shape(normalized_shape)
        check_eps(eps)
        super().__init__(shape, eps, elementwise_affine, bias, device, dtype)

    def forward(self, input: Tensor) -> Tensor:
        """Normalize ``input`` over its trailing ``normalized_shape`` dims."""
        check_trailing_shape(input, tuple(self.normalized_shape), "LayerNorm")
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


def channel_layer_norm(
    input: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    r"""LayerNorm over the channel dim 1 of an ``(N, C, *)`` input, at every position.

    .. math::
        y_{n,:,p} = \frac{x_{n,:,p} - \mathrm{E}_c[x_{n,:,p}]}{\sqrt{\mathrm{Var}_c[x_{n,:,p}]
            + \epsilon}} \cdot \gamma + \beta

    (ConvNeXt's "LayerNorm2d" for NCHW tensors). Computed with torch's fused LayerNorm kernel on
    a channels-last view. Paper: https://arxiv.org/abs/1607.06450.

    Args:
        input: ``(N, C, *)`` tensor.
        weight: ``(C,)`` scale or None.
        bias: ``(C,)`` shift or None.
        eps: added to the variance, > 0.

    Returns:
        The normalized tensor, same shape and dtype as ``input``.

    Example:
        >>> channel_layer_norm(torch.tensor([[[1.0], [3.0]]])).flatten().tolist()
        [-0.99999499..., 0.99999499...]
    """
    check_eps(eps)
    if not is_symbolic(input) and input.dim() < 2:
        raise ValueError(
            f"channel_layer_norm: expected input of shape (N, C, *), got {tuple(input.shape)}"
        )
    moved = input.movedim(1, -1)
    return torch.layer_norm(moved, (input.shape[1],), weight, bias, eps).movedim(-1, 1)


class ChannelLayerNorm(nn.Module):
    r"""LayerNorm over the channels of an ``(N, C, *)`` input (what BatchNorm layers convert to).

    .. math::
        y_{n,:,p} = \frac{x_{n,:,p} - \mathrm{E}_c[x_{n,:,p}]}{\sqrt{\mathrm{Var}_c[x_{n,:,p}]
            + \epsilon}} \cdot \gamma + \beta

    each position's channel vector is normalized on its own (no batch statistics), with a
    per-channel affine like BatchNorm's, so it accepts BatchNorm's ``weight``/``bias``.

    Args:
        num_channels: number of channels ``C`` in dim 1.
        eps: added to the variance, > 0.
        affine: learn a per-channel scale (and shift).
        device: device of the parameters.
        dtype: dtype of the parameters.
        bias: learn the shift (when ``affine``).

    Example:
        >>> ChannelLayerNorm(2)(torch.tensor([[[1.0], [3.0]]])).flatten().tolist()
        [-0.99999499..., 0.99999499...]
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        check_positive_int(num_channels, "num_channels")
        check_eps(eps)
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        self.weight: nn.Parameter | None
        self.bias: nn.Parameter | None
        register_affine(self, num_channels, affine=affine, bias=bias, device=device, dtype=dtype)

    def forward(self, input: Tensor) -> Tensor:
        """Normalize each position's channel vector."""
        check_channels(input, self.num_channels, "ChannelLayerNorm", "num_channels")
        return channel_layer_norm(input, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        """``num_channels, eps, affine, bias``."""
        return (
            f"{self.num_channels}, eps={self.eps}, affine={self.affine}, "
            f"bias={self.bias is not None}"
        )
