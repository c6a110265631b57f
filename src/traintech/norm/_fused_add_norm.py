"""Fused residual add + norm for pre-norm Transformers: ``h = x + residual; y = norm(h)``.

Returns ``(y, h)``: the normalized input of the next sub-layer and the new residual stream, from
one call (flash-attn's ``prenorm=True`` convention). On plain dense CPU tensors the RMSNorm
variant is one custom op (``traintech::add_rms_norm``): it saves ``(h, rstd)`` only, and its
backward adds the residual-stream gradient into the RMSNorm input gradient in place and hands
that same tensor to both ``x`` and ``residual`` (as torch's own ``add`` backward does).
Everywhere else (see :func:`traintech.norm._rms_norm.use_fast_path`) it is ``x + residual``
followed by torch's ``F.rms_norm``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from traintech.norm._layer_norm import LayerNorm
from traintech.norm._rms_norm import (
    RMSNorm,
    _add_rms_norm_op,
    default_rms_eps,
    rms_norm,
    use_fast_path,
)
from traintech.norm._stats import as_shape, check_eps, check_trailing_shape, is_symbolic


def _check_residual(input: Tensor, residual: Tensor | None, name: str) -> None:
    if residual is not None and not is_symbolic(input) and residual.shape != input.shape:
        raise ValueError(
            f"{name}: residual must have the input's shape {tuple(input.shape)}, "
            f"got {tuple(residual.shape)}"
        )


def fused_add_rms_norm(
    input: Tensor,
    residual: Tensor | None,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Residual add then RMSNorm in one pass: returns ``(rms_norm(h), h)`` with ``h = x + r``.

    .. math::
        h = x + r, \qquad y = \frac{h}{\sqrt{\frac{1}{D}\sum_j h_j^2 + \epsilon}} \odot \gamma

    ``residual=None`` means ``h = x`` (the first block). Paper (RMSNorm):
    https://arxiv.org/abs/1910.07467.

    Args:
        input: sub-layer output ``x``, ``(*, *normalized_shape)``.
        residual: residual stream ``r`` of the same shape, or None.
        normalized_shape: trailing shape to normalize over.
        weight: elementwise scale or None.
        eps: > 0, or None for the machine epsilon of the computation dtype.

    Returns:
        ``(y, h)``: the normalized tensor and the new residual stream.

    Example:
        >>> x, r = torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 2.0]])
        >>> y, h = fused_add_rms_norm(x, r, (2,))
        >>> h.tolist(), [round(v, 4) for v in y[0].tolist()]
        ([[3.0, 4.0]], [0.8485, 1.1314])
    """
    shape = as_shape(normalized_shape)
    check_trailing_shape(input, shape, "fused_add_rms_norm")
    _check_residual(input, residual, "fused_add_rms_norm")
    if eps is not None:
        check_eps(eps)
    if residual is None:
        return rms_norm(input, shape, weight, eps), input
    if use_fast_path(input, residual, weight):
        eps_value = default_rms_eps(input.dtype) if eps is None else eps
        y, h, _ = _add_rms_norm_op(input, residual, weight, math.prod(shape), eps_value)
        return y, h
    h = input + residual
    return F.rms_norm(h, shape, weight, eps), h


def fused_add_layer_norm(
    input: Tensor,
    residual: Tensor | None,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor]:
    r"""Residual add then LayerNorm: returns ``(layer_norm(h), h)`` with ``h = x + r``.

    .. math::
        h = x + r, \qquad y = \frac{h - \mathrm{E}[h]}{\sqrt{\mathrm{Var}[h] + \epsilon}}
            \cdot \gamma + \beta

    The normalization is torch's fused LayerNorm kernel (the fastest CPU path for it); the add
    and the LayerNorm share one autograd graph. Paper: https://arxiv.org/abs/1607.06450.

    Args:
        input: sub-layer output ``x``, ``(*, *normalized_shape)``.
        residual: residual stream ``r`` of the same shape, or None (``h = x``).
        normalized_shape: trailing shape to normalize over.
        weight: elementwise scale or None.
        bias: elementwise shift or None.
        eps: added to the variance, > 0.

    Returns:
        ``(y, h)``: the normalized tensor and the new residual stream.

    Example:
        >>> x, r = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 2.0]])
        >>> y, h = fused_add_layer_norm(x, r, (2,))
        >>> h.tolist(), [round(v, 4) for v in y[0].tolist()]
        ([[1.0, 4.0]], [-1.0, 1.0])
    """
    shape = as_shape(normalized_shape)
    check_eps(eps)
    check_trailing_shape(input, shape, "fused_add_layer_norm")
    _check_residual(input, residual, "fused_add_layer_norm")
    h = input if residual is None else input + residual
    return F.layer_norm(h, shape, weight, bias, eps), h


class FusedAddRMSNorm(RMSNorm):
    r"""RMSNorm taking the residual stream too: ``forward(x, residual) -> (y, x + residual)``.

    .. math::
        h = x + r, \qquad y = \frac{h}{\sqrt{\frac{1}{D}\sum_j h_j^2 + \epsilon}} \odot \gamma

    Same constructor, parameters and state_dict as :class:`RMSNorm` (a checkpoint of either
    loads into the other). Paper: https://arxiv.org/abs/1910.07467.

    Args:
        normalized_shape: trailing shape to normalize over.
        eps: > 0, or None for the machine epsilon of the computation dtype.
        elementwise_affine: learn an elementwise scale.
        device: device of the weight.
        dtype: dtype of the weight.

    Example:
        >>> norm = FusedAddRMSNorm(2)
        >>> y, h = norm(torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 2.0]]))
        >>> h.tolist()
        [[3.0, 4.0]]
    """

    def forward(  # type: ignore[override]
        self, input: Tensor, residual: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Return ``(rms_norm(input + residual), input + residual)``."""
        return fused_add_rms_norm(input, residual, self.normalized_shape, self.weight, self.eps)


class FusedAddLayerNorm(LayerNorm):
    r"""LayerNorm taking the residual stream too: ``forward(x, residual) -> (y, x + residual)``.

    .. math::
        h = x + r, \qquad y = \frac{h - \mathrm{E}[h]}{\sqrt{\mathrm{Var}[h] + \epsilon}}
            \cdot \gamma + \beta

    Same constructor, parameters and state_dict as :class:`LayerNorm`.
    Paper: https://arxiv.org/abs/1607.06450.

    Args:
        normalized_shape: trailing shape to normalize over.
        eps: added to the variance, > 0.
        elementwise_affine: learn an elementwise scale (and shift).
        bias: learn the shift.
        device: device of the parameters.
        dtype: dtype of the parameters.

    Example:
        >>> norm = FusedAddLayerNorm(2)
        >>> y, h = norm(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 2.0]]))
        >>> h.tolist()
        [[1.0, 4.0]]
    """

    def forward(  # type: ignore[override]
        self, input: Tensor, residual: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Return ``(layer_norm(input + residual), input + residual)``."""
        return fused_add_layer_norm(
            input, residual, self.normalized_shape, self.weight, self.bias, self.eps
        )
