r"""RMS normalization (Zhang & Sennrich 2019): ``RMSNorm``, ``rms_norm`` and our CPU kernel.

Dispatch, not replacement: our kernel is a fast path for plain dense CPU tensors only (see
:func:`use_fast_path`); everywhere else (CUDA, DTensor, meta/fake tensors, ``torch.func``
transforms, forward-mode AD, compile/export/FX tracing) ``F.rms_norm`` runs.

torch's CPU ``rms_norm`` is a composite of ~6 ops whose autograd graph keeps several full-size
intermediates and walks the data many times (about 4x the time of torch's fused LayerNorm for
the same shape). Ours is one custom op (``traintech::rms_norm``): the forward computes ``rstd``
once per row (one reduction pass, in fp32 for half inputs) and writes the output with a single
allocation; it saves only ``(x, rstd)``; the backward is the analytic gradient

.. math::
    \frac{\partial L}{\partial x} = r\, g - x\, \frac{r^3}{D} \sum_j g_j x_j,
    \qquad g = \gamma \odot \frac{\partial L}{\partial y}, \qquad
    \frac{\partial L}{\partial \gamma} = \sum_{\text{rows}} r\, x \odot
    \frac{\partial L}{\partial y}

computed for fp32/fp64 by torch's fused LayerNorm backward kernel with a zero mean plus a
per-row correction (see ``_native_backward``), and for half inputs into the ``dx`` buffer
alone in fp32 row blocks that stay in cache on CPU (allocating fresh pages costs about as much
as a pass over the data). With ``create_graph=True`` the backward is the same formula as
differentiable torch ops (:func:`differentiable_rms_backward`), so double backward is exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from traintech._compat import layer_norm_backward
from traintech._dispatch import plain_eager_cpu
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
    # fp32+ blocks are 4x larger (fewer small ops; measured ~2% faster at (4096, 1024)); the
    # last block first, so that the backward, which starts at row 0, finds those rows in cache
    step = _block_rows(x2, sd) * (4 if same else 1)
    for start in reversed(range(0, x2.shape[0], step)):
        rows = slice(start, start + step)
        r = rstd[rows]
        xb = x2[rows] if same else x2[rows].to(sd)
        # the block's reduction pass brings it into cache for the two multiplications below
        torch.linalg.vector_norm(xb, dim=-1, keepdim=True, out=r)
        r.square_().div_(d).add_(eps).rsqrt_()  # (|x|^2 / D + eps)^-1/2
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


_FAST_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def use_fast_path(input: Any, *others: Any) -> bool:
    """Whether our CPU kernel may run: plain dense CPU tensors outside every transform and tracer.

    The shared part is :func:`traintech._dispatch.plain_eager_cpu` (plain ``torch.Tensor`` or
    ``nn.Parameter`` CPU strided tensors; no ``torch.func`` transform, forward-mode AD level,
    ``torch.compile``/``torch.export``, TorchScript, FX tracing or dispatch/function mode
    active). RMSNorm adds: ``input`` of one dtype among fp32/fp64/bf16/fp16, non-empty, the other
    tensors of the same dtype, and no CPU autocast (torch's autocast policy decides the
    computation dtype of ``rms_norm``, so its own op runs there). Everywhere else (CUDA, MPS,
    meta/fake tensors, DTensor and other subclasses, ...) the callers run torch's own op, so that
    torch's fused kernels, decompositions and transform rules apply.
    """
    if input is None or not plain_eager_cpu(input, *others):
        return False
    if input.dtype not in _FAST_DTYPES or input.numel() == 0:
        return False
    if any(other is not None and other.dtype != input.dtype for other in others):
        return False
    return not torch.is_autocast_enabled("cpu")


@torch.library.custom_op(
    "traintech::rms_norm",
    mutates_args=(),
    device_types="cpu",
    schema="(Tensor x, Tensor? weight, int d, float eps) -> (Tensor, Tensor)",
)
def _rms_norm_op(x: Tensor, weight: Tensor | None, d: int, eps: float) -> tuple[Tensor, Tensor]:
    """``(y, rstd)``: our CPU forward (``rstd`` one per row of ``x.reshape(-1, d)``)."""
    y, rstd = rms_forward(x.reshape(-1, d), weight, eps)
    return y.view(x.shape), rstd


@_rms_norm_op.register_fake
def _rms_norm_fake(x: Tensor, weight: Tensor | None, d: int, eps: float) -> tuple[Tensor, Tensor]:
    rows = x.numel() // d
    return x.new_empty(x.shape), x.new_empty((rows, 1), dtype=stat_dtype(x.dtype))


def _rms_norm_vmap(
    info: Any, in_dims: tuple[int | None, ...], x: Tensor, weight: Tensor | None, d: int, eps: float
) -> tuple[tuple[Tensor, Tensor], tuple[int, int]]:
    """The ``torch.vmap`` rule: rows are independent, so a batch dim of ``x`` is more rows.

    A batched ``weight`` (one per vmapped sample) runs the op once per sample.
    """
    x_dim, w_dim = in_dims[0], in_dims[1]
    xb = x.movedim(x_dim, 0) if x_dim is not None else x.expand(info.batch_size, *x.shape)
    if weight is None or w_dim is None:
        y, rstd = _rms_norm_op(xb, weight, d, eps)
        return (y, rstd.view(info.batch_size, -1, 1)), (0, 0)
    wb = weight.movedim(w_dim, 0)
    outs = [_rms_norm_op(xb[i], wb[i], d, eps) for i in range(info.batch_size)]
    return (torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])), (0, 0)


torch.library.register_vmap("traintech::rms_norm", _rms_norm_vmap)


@torch.library.custom_op(
    "traintech::add_rms_norm",
    mutates_args=(),
    device_types="cpu",
    schema=(
        "(Tensor x, Tensor residual, Tensor? weight, int d, float eps) -> (Tensor, Tensor, Tensor)"
    ),
)
def _add_rms_norm_op(
    x: Tensor, residual: Tensor, weight: Tensor | None, d: int, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, h, rstd)`` with ``h = x + residual`` (contiguous) and ``y = rms_norm(h)``."""
    h = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    torch.add(x, residual, out=h)
    y, rstd = rms_forward(h.view(-1, d), weight, eps)
    return y.view(x.shape), h, rstd


@_add_rms_norm_op.register_fake
def _add_rms_norm_fake(
    x: Tensor, residual: Tensor, weight: Tensor | None, d: int, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    rows = x.numel() // d
    return (
        x.new_empty(x.shape),
        x.new_empty(x.shape),
        x.new_empty((rows, 1), dtype=stat_dtype(x.dtype)),
    )


@torch.library.custom_op(
    "traintech::rms_norm_backward",
    mutates_args=(),
    device_types="cpu",
    schema=(
        "(Tensor grad, Tensor x, Tensor rstd, Tensor? weight, Tensor? extra_grad, int d, "
        "bool need_weight_grad) -> (Tensor, Tensor)"
    ),
)
def _rms_norm_backward_op(
    grad: Tensor,
    x: Tensor,
    rstd: Tensor,
    weight: Tensor | None,
    extra_grad: Tensor | None,
    d: int,
    need_weight_grad: bool,
) -> tuple[Tensor, Tensor]:
    """``(dx, dweight)``; ``dweight`` is an empty tensor when not asked for."""
    extra = None if extra_grad is None else extra_grad.reshape(-1, d)
    dx, dw = rms_backward(
        grad.reshape(-1, d), x.reshape(-1, d), rstd, weight, need_weight_grad, extra
    )
    if dw is None or weight is None:
        return dx.view(x.shape), x.new_empty(0)
    return dx.view(x.shape), dw.to(weight.dtype).view(weight.shape)


@_rms_norm_backward_op.register_fake
def _rms_norm_backward_fake(
    grad: Tensor,
    x: Tensor,
    rstd: Tensor,
    weight: Tensor | None,
    extra_grad: Tensor | None,
    d: int,
    need_weight_grad: bool,
) -> tuple[Tensor, Tensor]:
    if weight is None or not need_weight_grad:
        return x.new_empty(x.shape), x.new_empty(0)
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


def differentiable_rms_backward(
    grad: Tensor, x: Tensor, weight: Tensor | None, d: int, eps: float
) -> tuple[Tensor, Tensor | None]:
    r"""RMSNorm's ``(dx, dweight)`` as a composite of torch ops, itself differentiable.

    Used by the backward when it runs with ``create_graph=True`` (double backward, gradient
    penalties): ``rstd`` is recomputed from ``x`` so its dependence on ``x`` is in the graph.

    .. math::
        \frac{\partial L}{\partial x} = r\, g - x\, \frac{r^3}{D} \sum_j g_j x_j,
        \qquad g = \gamma \odot \frac{\partial L}{\partial y}
    """
    sd = stat_dtype(x.dtype)
    xs = x.reshape(-1, d).to(sd)
    gy = grad.reshape(-1, d).to(sd)
    r = torch.rsqrt(xs.square().mean(-1, keepdim=True) + eps)
    g = gy if weight is None else gy * weight.reshape(-1).to(sd)
    dx = r * g - xs * (r.pow(3) / d) * (g * xs).sum(-1, keepdim=True)
    dw = None if weight is None else (gy * xs * r).sum(0).to(weight.dtype).view(weight.shape)
    return dx.to(x.dtype).view(x.shape), dw


def _rms_setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    x, weight, d, eps = inputs
    ctx.save_for_backward(x, weight, output[1])
    ctx.d, ctx.eps = d, eps


def _rms_grads(
    ctx: Any, gy: Tensor, x: Tensor, weight: Tensor | None, rstd: Tensor, extra: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """``(dx (+ extra), dweight)``: our kernel, or the composite when building a graph."""
    w_index = len(ctx.needs_input_grad) - 3
    need_w = weight is not None and ctx.needs_input_grad[w_index]
    if torch.is_grad_enabled():
        dx, dw = differentiable_rms_backward(gy, x, weight, ctx.d, ctx.eps)
        return (dx if extra is None else dx + extra), (dw if need_w else None)
    dx, dw = _rms_norm_backward_op(gy, x, rstd, weight, extra, ctx.d, need_w)
    return dx, (dw if need_w else None)


def _rms_backward(
    ctx: Any, gy: Tensor, _grad_rstd: Tensor | None
) -> tuple[Tensor, Tensor | None, None, None]:
    x, weight, rstd = ctx.saved_tensors
    dx, dw = _rms_grads(ctx, gy, x, weight, rstd, None)
    return dx, dw, None, None


_rms_norm_op.register_autograd(_rms_backward, setup_context=_rms_setup_context)


def _add_rms_setup_context(
    ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]
) -> None:
    _, _, weight, d, eps = inputs
    ctx.save_for_backward(output[1], weight, output[2])
    ctx.d, ctx.eps = d, eps


def _add_rms_backward(
    ctx: Any, gy: Tensor, gh: Tensor, _grad_rstd: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None, None, None]:
    h, weight, rstd = ctx.saved_tensors
    dh, dw = _rms_grads(ctx, gy, h, weight, rstd, gh)
    return dh, dh, dw, None, None


_add_rms_norm_op.register_autograd(_add_rms_backward, setup_context=_add_rms_setup_context)


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
    if eps is not None:
        check_eps(eps)
    if use_fast_path(input, weight):
        d = math.prod(shape)
        eps_value = default_rms_eps(input.dtype) if eps is None else eps
        return _rms_norm_op(input, weight, d, eps_value)[0]
    return F.rms_norm(input, shape, weight, eps)


class RMSNorm(nn.RMSNorm):
    r"""RMS normalization: a ``torch.nn.RMSNorm`` (subclass) with a faster CPU path.

    .. math::
        y = \frac{x}{\sqrt{\frac{1}{D}\sum_{j=1}^{D} x_j^2 + \epsilon}} \odot \gamma

    over the last ``len(normalized_shape)`` dims (:math:`D` values), identical in training and
    eval. Parameters, ``state_dict``, ``extra_repr`` are torch's. The forward is :func:`rms_norm`:
    our kernel (registered as the custom op ``traintech::rms_norm``) for plain dense CPU tensors,
    torch's ``F.rms_norm`` everywhere else (CUDA, transforms, tracing; see :func:`use_fast_path`).
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
        super().__init__(shape, eps, elementwise_affine, device, dtype)

    def forward(self, input: Tensor) -> Tensor:
        """Normalize ``input`` by its root mean square over the trailing dims."""
        return rms_norm(input, self.normalized_shape, self.weight, self.eps)
