r"""Gradient collection and total-norm computation shared by every clipper.

The total norm is computed in two stages, kept apart on purpose:

1. :func:`partial_power_sums` reduces each (device, dtype) group of gradients to one float64
   number: :math:`\sum |g|^p` for finite ``p > 0``, :math:`\max |g|` for ``p = inf``.
2. :func:`combine_partials` adds (or maxes) those partials and takes the root. This is the single
   seam where a distributed implementation inserts its cross-process all-reduce.

Accuracy: on CPU each tensor is viewed as rows of :data:`ROW` elements; each row is reduced in
float32 by one ``vector_norm(..., dim=1)`` call, and the row results are summed in float64. The
relative error then stays near :math:`10^{-8}` on tens of millions of elements, where a single
float32 reduction (``torch.linalg.vector_norm``) is off by about :math:`10^{-3}`. fp16/bf16
gradients are reduced in float32, so large fp16 gradients do not overflow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from traintech._compat import flatten_dense, foreach_norm, group_by_device_dtype

ParamsLike = Tensor | Iterable[Tensor]

#: Elements per row in the CPU reduction: each row is reduced in float32 (its error grows with
#: the row length), the row results are added in float64.
ROW = 1 << 12

#: Elements per float32 BLAS ``dot`` call for the 2-norm (relative error ~1e-7 at this length).
DOT_CHUNK = 1 << 18

#: fp16/bf16 gradients are widened to float32 this many elements at a time (fits in L2).
CHUNK = 1 << 17

#: Tensors below this many elements are concatenated before the CPU reduction (one call, not n).
_SMALL = 1 << 12

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class NotATensorError(TypeError, AttributeError):
    """A non-tensor was found in ``parameters``.

    Subclasses ``AttributeError`` too, because ``torch.nn.utils.clip_grad_norm_`` raises that for
    the same input (it reads ``.grad`` of each element), so code written for torch still catches it.
    """


def as_tensor_list(parameters: ParamsLike) -> list[Tensor]:
    """Return ``parameters`` (a tensor, a list or any iterable) as a list of tensors.

    Raises:
        NotATensorError: (a ``TypeError``) if an element of ``parameters`` is not a tensor.
    """
    if isinstance(parameters, Tensor):
        return [parameters]
    params = list(parameters)
    for index, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise NotATensorError(
                f"parameters[{index}] is a {type(p).__name__}; expected torch.Tensor "
                "(pass model.parameters() or a list of tensors)"
            )
    return params


def collect_grads(parameters: ParamsLike) -> list[Tensor]:
    """Return the ``.grad`` of each parameter that has one, in order.

    Accepts a single tensor, a list or any iterable (a generator is consumed once).

    Raises:
        TypeError: if an element of ``parameters`` is not a tensor.
    """
    return [p.grad for p in as_tensor_list(parameters) if p.grad is not None]


def is_inf_norm(norm_type: float) -> bool:
    """Whether ``norm_type`` selects the max-norm."""
    return math.isinf(norm_type) and norm_type > 0


def _is_regular(norm_type: float) -> bool:
    # p in (0, inf]: the cases where the total norm is the norm of the concatenated gradients.
    return norm_type > 0  # False for nan, 0, negatives and -inf


def result_dtype(grads: list[Tensor]) -> torch.dtype:
    """float64 when any gradient is double precision, else float32 (also for fp16/bf16)."""
    wide = any(g.dtype in (torch.float64, torch.complex128) for g in grads)
    return torch.float64 if wide else torch.float32


def _acc_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    if dtype == torch.float64 and device.type != "mps":
        return torch.float64
    return torch.float32


def _row_norms(flat: Tensor, norm_type: float, acc: torch.dtype) -> list[Tensor]:
    """p-norms of consecutive :data:`ROW`-element rows of a contiguous 1-D tensor (plus tail)."""
    n = flat.numel()
    full = n - n % ROW
    out = []
    if full:
        out.append(torch.linalg.vector_norm(flat[:full].view(-1, ROW), norm_type, dim=1))
    if n > full:
        out.append(torch.linalg.vector_norm(flat[full:], norm_type).reshape(1))
    return [o.to(acc) for o in out]


def _widened_row_norms(flat: Tensor, norm_type: float) -> list[Tensor]:
    """Row norms of an fp16/bf16 tensor, widened to float32 one cache-sized chunk at a time."""
    n_full = flat.numel() // CHUNK
    out = []
    if n_full:
        norms = torch.empty(n_full, CHUNK // ROW)
        buf = torch.empty(CHUNK)
        rows = buf.view(-1, ROW)
        chunks = flat[: n_full * CHUNK].view(n_full, CHUNK)
        for k in range(n_full):
            buf.copy_(chunks[k])
            torch.linalg.vector_norm(rows, norm_type, dim=1, out=norms[k])
        out.append(norms.view(-1))
    if flat.numel() > n_full * CHUNK:
        out.extend(_row_norms(flat[n_full * CHUNK :].float(), norm_type, torch.float32))
    return out


def _cpu_powsum(flat: Tensor, norm_type: float, exact: bool) -> Tensor:
    r"""float64 :math:`\sum |x|^p` of a contiguous 1-D floating tensor on CPU."""
    if exact:
        rows = [torch.linalg.vector_norm(flat, norm_type, dtype=torch.float64).reshape(1)]
    elif flat.dtype in (torch.float16, torch.bfloat16):
        rows = _widened_row_norms(flat, norm_type)
    elif norm_type == 2.0:
        # BLAS dot is the fastest single-thread reduction torch has; DOT_CHUNK keeps it accurate.
        squares = [torch.dot(c, c).reshape(1) for c in flat.split(DOT_CHUNK)]
        return torch.cat(squares).double().sum()
    else:
        rows = _row_norms(flat, norm_type, flat.dtype)
    return torch.cat(rows).double().pow(norm_type).sum()


def _cpu_group_partial(grads: list[Tensor], norm_type: float, exact: bool = False) -> Tensor:
    """One float64 partial (power sum, or max for inf) for CPU gradients of one dtype."""
    if is_inf_norm(norm_type):
        maxima = []
        for g in grads:
            if g.numel() == 0:
                continue
            if g.dtype in _FLOATS and g.layout == torch.strided:
                lo, hi = torch.aminmax(g)
                maxima.append(torch.maximum(hi, -lo).double())
            else:
                maxima.append(torch.linalg.vector_norm(g, norm_type).double())
        return torch.stack(maxima).max() if maxima else torch.zeros((), dtype=torch.float64)
    parts: list[Tensor] = []
    small: list[Tensor] = []
    plain_dtype = grads[0].dtype in _FLOATS  # one dtype per group
    for g in grads:
        if plain_dtype and g.layout == torch.strided and g.is_contiguous():
            if g.numel() < _SMALL:
                small.append(g)
            else:
                parts.append(_cpu_powsum(g.view(-1), norm_type, exact))
        else:  # complex, sparse, strided views: torch's own reduction
            norm = torch.linalg.vector_norm(g, norm_type)
            parts.append(norm.double().pow(norm_type))
    if small:
        parts.append(_cpu_powsum(flatten_dense(small), norm_type, exact))
    if not parts:
        return torch.zeros((), dtype=torch.float64)
    return torch.stack(parts).sum()


def _device_group_partial(grads: list[Tensor], norm_type: float, device: torch.device) -> Tensor:
    """One partial for accelerator gradients of one dtype: torch's multi-tensor norm kernel."""
    acc = _acc_dtype(grads[0].dtype, device)
    if grads[0].dtype not in _FLOATS:
        norms = [torch.linalg.vector_norm(g, norm_type) for g in grads]
    else:
        norms = foreach_norm(grads, norm_type, dtype=acc)
    stacked = torch.stack(norms).to(acc)
    if is_inf_norm(norm_type):
        return stacked.max()
    return stacked.pow(norm_type).sum()


def partial_power_sums(grads: list[Tensor], norm_type: float) -> list[Tensor]:
    r"""Per-(device, dtype) partial reductions of ``grads`` for a ``norm_type`` in ``(0, inf]``.

    Each entry is a 0-dim tensor on its group's device: :math:`\sum |g|^p` (float64 on CPU and
    CUDA), or :math:`\max |g|` for ``p = inf``.
    """
    partials = []
    for (device, _), group in group_by_device_dtype(grads).items():
        if device.type == "cpu":
            partial = _cpu_group_partial(group, norm_type)
            # A float32 chunk can overflow (|g| > 1.8e19) while the gradient is finite; redo
            # that group in float64. On CPU reading the value costs no device sync.
            if not math.isfinite(partial.item()) and not is_inf_norm(norm_type):
                partial = _cpu_group_partial(group, norm_type, exact=True)
        else:
            partial = _device_group_partial(group, norm_type, device)
        partials.append(partial)
    return partials


def combine_partials(
    partials: list[Tensor], norm_type: float, device: torch.device, dtype: torch.dtype
) -> Tensor:
    r"""Combine per-group partials into the total norm on ``device``, in ``dtype``.

    .. math::
        \|g\|_p = \Big(\sum_k s_k\Big)^{1/p}, \qquad \|g\|_\infty = \max_k m_k

    where :math:`s_k` are partial power sums and :math:`m_k` partial maxima.

    DISTRIBUTED SEAM: this is the one place where partial results meet. A data-parallel or sharded
    (DDP / FSDP2 with DTensor gradients) implementation all-reduces ``total`` here, with SUM for
    finite ``p`` and MAX for ``inf``, *before* the root is taken; nothing else in traintech.clip
    needs to change.
    """
    if not partials:
        return torch.zeros((), dtype=dtype, device=device)
    acc = partials[0].dtype if device.type == "mps" else torch.float64
    moved = torch.stack([p.to(device=device, dtype=acc) for p in partials])
    if is_inf_norm(norm_type):
        total = moved.max()
        # <- all_reduce(total, op=MAX) goes here
        return total.to(dtype)
    total = moved.sum()
    # <- all_reduce(total, op=SUM) goes here
    return total.pow(1.0 / norm_type).to(dtype)


def _torch_formula_norm(grads: list[Tensor], norm_type: float, dtype: torch.dtype) -> Tensor:
    # p <= 0 or nan: torch takes the p-"norm" of the per-tensor norms, which for p = 0 is the
    # number of tensors with a non-zero entry; we keep that exactly.
    device = grads[0].device
    norms = [torch.linalg.vector_norm(g, norm_type).to(device=device, dtype=dtype) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


def _compiled_norm(grads: list[Tensor], norm_type: float, dtype: torch.dtype) -> Tensor:
    device = grads[0].device
    norms = [
        torch.linalg.vector_norm(g, norm_type, dtype=_acc_dtype(g.dtype, g.device)).to(device)
        for g in grads
    ]
    return torch.linalg.vector_norm(torch.stack(norms).to(torch.float64), norm_type).to(dtype)


@torch.no_grad()
def total_norm(grads: list[Tensor], norm_type: float = 2.0) -> Tensor:
    r"""The ``norm_type``-norm of all ``grads`` viewed as one vector.

    .. math::
        \|g\|_p = \Big(\sum_i \sum_j |g_{ij}|^p\Big)^{1/p},
        \qquad \|g\|_\infty = \max_{i,j} |g_{ij}|

    Accumulated in float64 from float32 chunks (see the module docstring); fp16/bf16 gradients are
    reduced in float32. DTensor gradients (FSDP2, tensor parallel) give the norm of the whole,
    unsharded gradient, the same on every rank (:mod:`traintech.clip._sharded`). Returns a 0-dim
    tensor on the device of the first gradient, float64 when any gradient is float64 and float32
    otherwise (0.0 when ``grads`` is empty). For
    ``norm_type <= 0`` (or nan) it follows torch's definition (the norm of the per-tensor norms).
    """
    if len(grads) == 0:
        return torch.tensor(0.0)
    from traintech.clip._sharded import has_dtensor, sharded_total_norms

    if has_dtensor(grads):  # FSDP2 / tensor parallel: the global norm, one all-reduce
        return sharded_total_norms([grads], norm_type)[0]
    dtype = result_dtype(grads)
    if not _is_regular(norm_type):
        return _torch_formula_norm(grads, norm_type, dtype)
    if torch.compiler.is_compiling():
        # Inside torch.compile (fullgraph included): no data-dependent branch or host read; the
        # per-tensor norms in the accumulation dtype, combined as torch does.
        return _compiled_norm(grads, norm_type, dtype)
    return combine_partials(partial_power_sums(grads, norm_type), norm_type, grads[0].device, dtype)
