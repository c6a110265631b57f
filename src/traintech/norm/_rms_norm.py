r"""RMS normalization (Zhang & Sennrich 2019): ``RMSNorm``, ``rms_norm`` and our autograd kernel.

torch's CPU ``rms_norm`` is a composite of ~6 ops whose autograd graph keeps several full-size
intermediates and walks the data many times (about 4x the time of torch's fused LayerNorm for
the same shape). Ours is one ``torch.autograd.Function``: the forward computes ``rstd`` once per
row (one reduction pass, in fp32 for half inputs) and writes the output with a single allocation;
it saves only ``(x, rstd)``; the backward is the analytic gradient

.. math::
    \frac{\partial L}{\partial x} = r\, g - x\, \frac{r^3}{D} \sum_j g_j x_j,
    \qquad g = \gamma \odot \frac{\partial L}{\partial y}, \qquad
    \frac{\partial L}{\partial \gamma} = \sum_{\text{rows}} r\, x \odot
    \frac{\partial L}{\partial y}

computed for fp32/fp64 by torch's fused LayerNorm backward kernel with a zero mean plus a
per-row correction (see ``_native_backward``), and for half inputs into the ``dx`` buffer
alone in fp32 row blocks that stay in cache on CPU (allocating fresh pages costs about as much
as a pass over the data).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from traintech._compat import layer_norm_backward
from traintech.norm._stats import as_shape, check_eps, check_trailing_shape, stat_dtype


def default_rms_eps(dtype: torch.dtype) -> float:
    """Torch's default RMSNorm eps: the machine epsilon of the computation dtype."""
    return torch.finfo(stat_dtype(dtype)).eps


#: Bytes of one row block (per tensor) on CPU: a block's rows (of x and y in the forward; of x,
#: gy and dx in the half backward) stay in a 2 MiB L2 across the passes over it; measured 5-23%
#: faster than whole-tensor passes at (4096, 1024). fp32/fp64 use blocks 4x as large (their
#: passes are fewer). Other devices use one block.
_CPU_BLOCK_BYTES = 1 << 19


def _block_rows(x2: Tensor, dtype: torch.dtype) -> int:
    rows = x2.shape[0]
    if x2.device.type != "cpu" or rows == 0:
        return max(rows, 1)
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(1, _CPU_BLOCK_BYTES // max(1, x2.shape[1] * itemsize))


def rms_forward(x2: Tensor, weight: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
    """``(y, rstd)`` for a 2-D ``(rows, D)`` input; ``y`` in ``x2``'s dtype, ``rstd`` in fp32+.

    Half inputs are upcast one row block at a time, so no full-size fp32 copy is made.
    """
    sd = stat_dtype(x2.dtype)
    d = x2.shape[-1]
    ws = None if weight is None else weight.reshape(-1).to(sd)
    same = x2.dtype == sd
    y = torch.empty_like(x2)
    rstd = torch.empty(x2.shape[0], 1, dtype=sd, device=x2.device)
    eps_t = torch.tensor(eps, dtype=sd, device=x2.device)
    # fp32+ blocks are 4x larger (fewer small ops; measured ~2% faster at (4096, 1024)); the
    # last block first, so that the backward, which starts at row 0, finds those rows in cache
    step = _block_rows(x2, sd) * (4 if same else 1)
    for start in reversed(range(0, x2.shape[0], step)):
        rows = slice(start, start + step)
        r = rstd[rows]
        xb = x2[rows] if same else x2[rows].to(sd)
        # the block's reduction pass brings it into cache for the two multiplications below
        torch.linalg.vector_norm(xb, dim=-1, keepdim=True, out=r)
        torch.addcmul(eps_t, r, r, value=1.0 / d, out=r).rsqrt_()  # (|x|^2 / D + eps)^-1/2
        out = y[rows] if same else xb
        torch.mul(xb, r, out=out)
        if ws is not None:
            out.mul_(ws)
        if not same:
            y[rows].copy_(out)
    return y, rstd


def rms_backward(
    gy2: Tensor,
    x2: Tensor,
    rstd: Tensor,
    weight: Tensor | None,
    need_weight_grad: bool,
    extra_grad: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Analytic RMSNorm backward on 2-D tensors: ``(dx in x2's dtype, dweight or None)``.

    ``extra_grad`` (the residual stream's gradient in the fused add + norm) is added to ``dx``.
    fp32/fp64 inputs use torch's fused LayerNorm backward kernel (see :func:`_native_backward`);
    half inputs are upcast one row block at a time (see :func:`_blocked_backward`).
    """
    ws = None if weight is None else weight.reshape(-1).to(rstd.dtype)
    need_w = ws is not None and need_weight_grad
    if x2.dtype == rstd.dtype and gy2.dtype == rstd.dtype:
        return _native_backward(gy2, x2, rstd, ws, need_w, extra_grad)
    return _blocked_backward(gy2, x2, rstd, ws, need_w, extra_grad)


def _native_backward(
    gy2: Tensor,
    x2: Tensor,
    rstd: Tensor,
    ws: Tensor | None,
    need_w: bool,
    extra_grad: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    r"""RMSNorm backward through torch's fused LayerNorm backward with a zero mean.

    With :math:`\mu = 0` LayerNorm's gradient is RMSNorm's except for the mean-gradient term
    :math:`-\frac{r}{D} \sum_j g_j`, which is added back (a mat-vec over ``gy`` and an add over
    ``dx``, block by block); its weight gradient :math:`\sum_{\text{rows}} g\, x\, r` is
    RMSNorm's as it is. One native kernel walks the data once per row, where our composite of
    elementwise ops made six passes (fp32 (8, 512, 1024) forward + backward on 1 CPU thread,
    paired runs: 1.30x LayerNorm's time with the composite, 1.24x with this).
    """
    d = x2.shape[-1]
    dx, dweight, _ = layer_norm_backward(
        gy2, x2, [d], torch.zeros_like(rstd), rstd, ws, grad_weight=need_w, grad_bias=False
    )
    # the correction r_i / D * sum_j gamma_j gy_ij, in row blocks from the last one back: the
    # kernel has just walked the rows in order, so the last rows of gy and dx are still in cache
    rd = rstd.div(d)
    gsum = torch.empty_like(rstd)
    step = 4 * _block_rows(x2, rstd.dtype)
    for start in reversed(range(0, x2.shape[0], step)):
        rows = slice(start, start + step)
        gs = gsum[rows]
        if ws is None:
            torch.sum(gy2[rows], dim=-1, keepdim=True, out=gs)
        else:
            torch.mv(gy2[rows], ws, out=gs.view(-1))
        block = dx[rows].add_(gs.mul_(rd[rows]))
        if extra_grad is not None:
            block.add_(extra_grad[rows])
    return dx, (dweight if need_w else None)


def _blocked_backward(
    gy2: Tensor,
    x2: Tensor,
    rstd: Tensor,
    ws: Tensor | None,
    need_w: bool,
    extra_grad: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """RMSNorm backward for half inputs, upcast one row block at a time.

    ``dx`` is written block by block into one output buffer; the intermediates live in one fp32
    block buffer, so there is no full-size fp32 copy; ``dweight`` accumulates per block in fp32.
    """
    sd = rstd.dtype
    d = x2.shape[-1]
    out = torch.empty_like(x2)
    dweight = torch.zeros(d, dtype=sd, device=x2.device) if need_w else None
    coef = rstd.pow(3).div_(-d)
    step = _block_rows(x2, sd)
    for start in range(0, x2.shape[0], step):
        rows = slice(start, start + step)
        g, x, r = gy2[rows].to(sd), x2[rows].to(sd), rstd[rows]
        buf = torch.empty_like(x)
        torch.mul(g, x, out=buf)  # gy_ij * x_ij
        if dweight is not None:
            dweight.addmv_(buf.t(), r.view(-1))  # sum_i r_i gy_ij x_ij
        if ws is not None:
            dot = torch.mv(buf, ws).unsqueeze(-1)  # sum_j gamma_j gy_ij x_ij
            torch.mul(g, ws, out=buf)
            buf.mul_(r)
        else:
            dot = buf.sum(dim=-1, keepdim=True)
            torch.mul(g, r, out=buf)
        buf.addcmul_(x, dot.mul_(coef[rows]))
        if extra_grad is not None:
            buf.add_(extra_grad[rows])
        out[rows].copy_(buf)
    return out, dweight


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, d: int, eps: float) -> Tensor:
        y, rstd = rms_forward(x.reshape(-1, d), weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.d = d
        return y.view(x.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, weight, rstd = ctx.saved_tensors
        need_w = weight is not None and ctx.needs_input_grad[1]
        dx, dw = rms_backward(gy.reshape(-1, ctx.d), x.reshape(-1, ctx.d), rstd, weight, need_w)
        dweight = None if dw is None else dw.to(weight.dtype).view(weight.shape)
        return dx.view(x.shape), dweight, None, None


def rms_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    r"""RMS normalization over the last ``len(normalized_shape)`` dims (torch's signature).

    .. math::
        y = \frac{x}{\sqrt{\frac{1}{D}\sum_{j=1}^{D} x_j^2 + \epsilon}} \odot \gamma

    ``eps=None`` uses ``torch.finfo`` of the computation dtype (fp32 for half inputs), as torch.
    Statistics and the normalization are computed in fp32 for half inputs and cast back.
    Paper: Zhang & Sennrich 2019, https://arxiv.org/abs/1910.07467.

    Args:
        input: ``(*, *normalized_shape)`` tensor.
        normalized_shape: trailing shape to normalize over.
        weight: elementwise scale of shape ``normalized_shape`` or None.
        eps: added to the mean square, > 0, or None for the dtype's machine epsilon.

    Returns:
        The normalized tensor, same shape and dtype as ``input``.

    Example:
        >>> rms_norm(torch.tensor([[3.0, 4.0]]), (2,), eps=1e-6).tolist()
        [[0.8485..., 1.1313...]]
    """
    shape = as_shape(normalized_shape)
    check_trailing_shape(input, shape, "rms_norm")
    eps = default_rms_eps(input.dtype) if eps is None else check_eps(eps)
    return _RMSNormFunction.apply(input, weight, math.prod(shape), eps)


class RMSNorm(nn.Module):
    r"""RMS normalization, drop-in for ``torch.nn.RMSNorm`` (same arguments and state_dict).

    .. math::
        y = \frac{x}{\sqrt{\frac{1}{D}\sum_{j=1}^{D} x_j^2 + \epsilon}} \odot \gamma

    over the last ``len(normalized_shape)`` dims (:math:`D` values), identical in training and
    eval; our own forward and backward (saves only the input and one ``rstd`` per row).
    Paper: https://arxiv.org/abs/1910.07467.

    Args:
        normalized_shape: trailing shape to normalize over (an int means the last dim).
        eps: added to the mean square, > 0; None uses ``torch.finfo`` of the computation dtype.
        elementwise_affine: learn an elementwise scale :math:`\gamma`.
        device: device of the weight.
        dtype: dtype of the weight.

    Example:
        >>> RMSNorm(2, eps=1e-6)(torch.tensor([[3.0, 4.0]])).tolist()
        [[0.8485..., 1.1313...]]
    """

    normalized_shape: tuple[int, ...]

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float | None = None,
        elementwise_affine: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        shape = as_shape(normalized_shape)
        if eps is not None:
            check_eps(eps)
        super().__init__()
        self.normalized_shape = shape
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.weight: nn.Parameter | None
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight to 1."""
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def forward(self, input: Tensor) -> Tensor:
        """Normalize ``input`` by its root mean square over the trailing dims."""
        check_trailing_shape(input, self.normalized_shape, "RMSNorm")
        eps = default_rms_eps(input.dtype) if self.eps is None else self.eps
        return _RMSNormFunction.apply(input, self.weight, math.prod(self.normalized_shape), eps)

    def extra_repr(self) -> str:
        """Same text as torch's."""
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}"
        )
