r"""Gradient collection and total-norm computation shared by every clipper.

Every norm in :mod:`traintech.clip` (the functional clip, the clippers, per-layer clipping, the
guarded step) follows one straight path, in three stages kept apart on purpose:

1. **Local partials.** :func:`partial_power_sums` reduces each (device, dtype) group of the
   gradients this process holds to one float64 number: :math:`\sum |g|^p` for finite ``p > 0``,
   :math:`\max |g|` for ``p = inf``. DTensor gradients (FSDP2, tensor parallel) contribute their
   local shards, grouped by the process groups they are sharded over
   (:func:`traintech.clip._sharded.split_by_reduce_key`).
2. **The reduction seam.** :func:`combine_partial_sets` adds (or maxes) the partials of each key
   and all-reduces them across processes, one packed collective per process group for the whole
   call (:func:`traintech._distributed.all_reduce_packed`; nothing happens for plain tensors).
   This is the only place where partial results of different processes meet.
3. **The root** :math:`(\sum_k s_k)^{1/p}`, cast to the result dtype.

Imports point one way: this module imports :mod:`traintech.clip._sharded` and
:mod:`traintech._distributed`, never the clippers.

Accuracy: on CPU a large tensor is viewed as rows of :data:`ROW` elements; each row is reduced
in float32 by one ``vector_norm(..., dim=1)`` call, and the row results are summed in float64.
The relative error then stays near :math:`10^{-8}` on tens of millions of elements, where a
single float32 reduction (``torch.linalg.vector_norm``) is off by about :math:`10^{-3}`. Tensors
up to :data:`_FOREACH_MAX` elements get their norms from one multi-tensor call (their squares
are added in float64 on the host). fp16/bf16 gradients are reduced in float32, so large fp16
gradients do not overflow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from traintech._compat import flatten_dense, foreach_norm, group_by_device_dtype, state_dtype
from traintech._distributed import ReduceKey, all_reduce_packed, any_dtensor, refuse_fsdp1
from traintech.clip._sharded import split_by_reduce_key

ParamsLike = Tensor | Iterable[Tensor]

#: Elements per row in the CPU reduction: each row is reduced in float32 (its error grows with
#: the row length), the row results are added in float64.
ROW = 1 << 12

#: fp16/bf16 gradients are widened to float32 this many elements at a time (fits in L2).
CHUNK = 1 << 17

#: fp16/bf16 tensors below this many elements are concatenated before the CPU reduction.
_SMALL = 1 << 12

#: float32/float64 tensors up to this many elements get their norms from one multi-tensor call
#: (``_foreach_norm``; the relative error of one such float32 reduction is ~1e-7 at this length),
#: then are combined in float64.
_FOREACH_MAX = 1 << 15

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

F32 = torch.float32


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
        ValueError: if a parameter is an FSDP1 ``FlatParameter`` (its gradient is this rank's
            shard only; see :func:`traintech._distributed.refuse_fsdp1`).
    """
    params = as_tensor_list(parameters)
    refuse_fsdp1(params)
    return [p.grad for p in params if p.grad is not None]


def is_inf_norm(norm_type: float) -> bool:
    """Whether ``norm_type`` selects the max-norm."""
    return math.isinf(norm_type) and norm_type > 0


def _is_regular(norm_type: float) -> bool:
    # p in (0, inf]: the cases where the total norm is the norm of the concatenated gradients.
    return norm_type > 0  # False for nan, 0, negatives and -inf


def result_dtype(grads: list[Tensor]) -> torch.dtype:
    """float64 when any gradient is double precision, else float32 (also for fp16/bf16)."""
    f64, c128 = torch.float64, torch.complex128
    wide = any(g.dtype is f64 or g.dtype is c128 for g in grads)
    return torch.float64 if wide else torch.float32


def _acc_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else state_dtype(device)


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
        # One row-wise float32 reduction pass (as fast as torch's own norm kernel), the row
        # norms squared and added in float64 by one dot product.
        row_norms = _row_norms(flat, norm_type, torch.float64)
        norms = row_norms[0] if len(row_norms) == 1 else torch.cat(row_norms)
        return torch.dot(norms, norms)
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
    few: list[Tensor] = []  # float32/float64 tensors up to _FOREACH_MAX elements
    dtype = grads[0].dtype  # one dtype per group
    plain_dtype = dtype in _FLOATS
    wide_ok = not exact and dtype in (torch.float32, torch.float64)
    strided = torch.strided
    for g in grads:
        n = g.numel()
        if wide_ok and g.layout is strided and n <= _FOREACH_MAX:
            few.append(g)  # any strides: the multi-tensor norm reads views as they are
        elif n == 0:
            continue  # adds nothing (and an empty row reduction is refused)
        elif plain_dtype and g.layout is strided and g.is_contiguous():
            if n < _SMALL:
                small.append(g)
            else:
                parts.append(_cpu_powsum(g.view(-1), norm_type, exact))
        else:  # complex, sparse, strided views: torch's own reduction
            norm = torch.linalg.vector_norm(g, norm_type)
            parts.append(norm.double().pow(norm_type))
    if few:
        norms = foreach_norm(few, norm_type)
        if norm_type == 2.0:
            # Reading CPU scalars is free: the float32 norms squared exactly in float64 and added
            # with correct rounding (fsum), cheaper than three tiny tensor ops.
            squares = math.fsum([n.item() ** 2 for n in norms])
            parts.append(torch.full((), squares, dtype=torch.float64))
        else:
            parts.append(torch.stack(norms).double().pow(norm_type).sum())
    if small:
        parts.append(_cpu_powsum(flatten_dense(small), norm_type, exact))
    if not parts:
        return torch.zeros((), dtype=torch.float64)
    return parts[0] if len(parts) == 1 else torch.stack(parts).sum()


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
    r"""Stage 1: per-(device, dtype) partial reductions of local ``grads``, ``p`` in ``(0, inf]``.

    Each entry is a 0-dim tensor on its group's device: :math:`\sum |g|^p` (float64, float32 on
    devices without float64), or :math:`\max |g|` for ``p = inf``. ``grads`` are plain (local)
    tensors.
    """
    return _group_partials(grads, norm_type)[0]


def _group_partials(grads: list[Tensor], norm_type: float) -> tuple[list[Tensor], bool]:
    """:func:`partial_power_sums`, and whether a group is double precision (the result dtype)."""
    partials = []
    wide = False
    for (device, dtype), group in group_by_device_dtype(grads).items():
        wide = wide or dtype is torch.float64 or dtype is torch.complex128
        if device.type == "cpu":
            partial = _cpu_group_partial(group, norm_type)
            # A float32 chunk can overflow (|g| > 1.8e19) while the gradient is finite; redo
            # that group in float64. On CPU reading the value costs no device sync.
            if not math.isfinite(partial.item()) and not is_inf_norm(norm_type):
                partial = _cpu_group_partial(group, norm_type, exact=True)
        else:
            partial = _device_group_partial(group, norm_type, device)
        partials.append(partial)
    return partials, wide


def _fold(values: list[Tensor], inf: bool, device: torch.device, acc: torch.dtype) -> Tensor:
    """Add (max for ``inf``) 0-dim partials on ``device`` in ``acc``."""
    if len(values) == 1:
        return values[0].to(device=device, dtype=acc)  # the sum of one value is that value
    moved = torch.stack([v.to(device=device, dtype=acc) for v in values])
    return moved.max() if inf else moved.sum()


def combine_partial_sets(
    sets: list[tuple[list[Tensor], list[ReduceKey]]],
    norm_type: float,
    devices: list[torch.device],
    dtypes: list[torch.dtype],
) -> list[Tensor]:
    r"""Stages 2 and 3: reduce each set of partials across processes and take the root.

    .. math::
        \|g\|_p = \Big(\sum_{\text{ranks}} \sum_k s_k\Big)^{1/p}, \qquad
        \|g\|_\infty = \max_{\text{ranks}} \max_k m_k

    THE DISTRIBUTED SEAM. Set ``i`` holds partials (stage 1 results) and, for each, the process
    groups it must be reduced over (``()``: none). Within a set, the partials of one key are added
    (or maxed); those values, from every set, are all-reduced in one packed collective per
    process group (SUM for finite ``p``, MAX for ``inf``, a NaN on any rank reaching every rank);
    then each set's values are added (maxed) on ``devices[i]`` and rooted, in ``dtypes[i]``.
    Every rank must call it with the same keys in the same order. An empty set gives 0.
    """
    inf = is_inf_norm(norm_type)
    if len(sets) == 1 and not any(sets[0][1]):
        # One set, nothing to reduce across processes (plain tensors): fold and take the root.
        partials, device, dtype = sets[0][0], devices[0], dtypes[0]
        if not partials:
            return [torch.zeros((), dtype=dtype, device=device)]
        if norm_type == 2.0 and len(partials) == 1 and device.type == "cpu":
            # sqrt on the host (reading a CPU scalar is free): the bits of pow(0.5).to(dtype).
            root = math.sqrt(partials[0].item())
            return [torch.full((), root, dtype=dtype)]
        acc = partials[0].dtype if device.type == "mps" else torch.float64
        total = _fold(partials, inf, device, acc)
        return [(total if inf else total.pow(1.0 / norm_type)).to(dtype)]
    values: list[Tensor] = []
    keys: list[ReduceKey] = []
    owners: list[int] = []
    for index, (partials, partial_keys) in enumerate(sets):
        device = devices[index]
        acc = partials[0].dtype if partials and device.type == "mps" else torch.float64
        by_key: dict[ReduceKey, list[Tensor]] = {}
        for partial, key in zip(partials, partial_keys, strict=True):
            by_key.setdefault(key, []).append(partial)
        for key, members in by_key.items():
            values.append(_fold(members, inf, device, acc))
            keys.append(key)
            owners.append(index)
    reduced = all_reduce_packed(values, keys, "max" if inf else "sum")
    out = []
    for index, device in enumerate(devices):
        mine = [v for v, owner in zip(reduced, owners, strict=True) if owner == index]
        if not mine:
            out.append(torch.zeros((), dtype=dtypes[index], device=device))
            continue
        total = mine[0] if len(mine) == 1 else _fold(mine, inf, device, mine[0].dtype)
        out.append((total if inf else total.pow(1.0 / norm_type)).to(dtypes[index]))
    return out


def combine_partials(
    partials: list[Tensor],
    norm_type: float,
    device: torch.device,
    dtype: torch.dtype,
    keys: list[ReduceKey] | None = None,
) -> Tensor:
    r"""The total norm from one list of partials: :func:`combine_partial_sets` for one set.

    ``keys`` (one per partial, default: none reduced) says over which process groups each
    partial is all-reduced before the root is taken.
    """
    keys = [()] * len(partials) if keys is None else keys
    return combine_partial_sets([(partials, keys)], norm_type, [device], [dtype])[0]


def _local_partials(
    grads: list[Tensor], norm_type: float
) -> tuple[list[Tensor], list[ReduceKey], torch.dtype]:
    """Stage 1 for gradients that may be DTensors: the partials of each reduce key's shards.

    Also returns the result dtype: float64 when a gradient is double precision, else float32.
    """
    split = split_by_reduce_key(grads)
    if len(split) == 1 and not split[0][0]:  # plain tensors: no shard can be empty everywhere
        local = grads if not is_inf_norm(norm_type) else [t for t in grads if t.numel() > 0]
        found, wide = _group_partials(local, norm_type) if local else ([], False)
        if not found:
            found = [torch.zeros((), dtype=torch.float64, device=grads[0].device)]
        return found, [()] * len(found), torch.float64 if wide else torch.float32
    partials: list[Tensor] = []
    keys: list[ReduceKey] = []
    for key, local in split:
        local = [t for t in local if t.numel() > 0]  # torch refuses the inf-norm of nothing
        found = partial_power_sums(local, norm_type) if local else []
        if not found:  # an uneven shard can leave a rank with nothing: it still joins the reduce
            found = [torch.zeros((), dtype=torch.float64, device=grads[0].device)]
        partials.extend(found)
        keys.extend([key] * len(found))
    return partials, keys, result_dtype(grads)  # the DTensors' dtypes, the same on every rank


def total_norms(groups: list[list[Tensor]], norm_type: float) -> list[Tensor]:
    """The ``norm_type``-norm of each list of gradients (each viewed as one vector).

    One straight path (see the module docstring) for all lists at once, so per-layer clipping of
    sharded gradients costs one packed all-reduce whatever the number of layers.

    Returns:
        One 0-dim tensor per list, identical on every rank: float64 when a gradient is float64,
        else float32, on the device of the list's first gradient (0.0 on CPU for an empty list).

    Raises:
        ValueError: for ``norm_type <= 0`` (or NaN) with DTensor gradients (torch's per-tensor
            definition has no sharded form), or a gradient with a ``Partial`` placement.
    """
    sharded = any(any_dtensor(grads) for grads in groups)
    if not _is_regular(norm_type) or (torch.compiler.is_compiling() and not sharded):
        if sharded:
            raise ValueError(
                f"norm_type must be > 0 for sharded (DTensor) gradients, got {norm_type}: torch's "
                "definition for p <= 0 combines per-tensor norms, which have no sharded form"
            )
        return [total_norm(grads, norm_type) for grads in groups]
    sets: list[tuple[list[Tensor], list[ReduceKey]]] = []
    dtypes: list[torch.dtype] = []
    for grads in groups:
        partials, keys, dtype = _local_partials(grads, norm_type) if grads else ([], [], F32)
        sets.append((partials, keys))
        dtypes.append(dtype)
    devices = [grads[0].device if grads else torch.device("cpu") for grads in groups]
    return combine_partial_sets(sets, norm_type, devices, dtypes)


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


def total_norm(grads: list[Tensor], norm_type: float = 2.0) -> Tensor:
    r"""The ``norm_type``-norm of all ``grads`` viewed as one vector.

    .. math::
        \|g\|_p = \Big(\sum_i \sum_j |g_{ij}|^p\Big)^{1/p},
        \qquad \|g\|_\infty = \max_{i,j} |g_{ij}|

    Accumulated in float64 from float32 chunks (see the module docstring); fp16/bf16 gradients are
    reduced in float32. DTensor gradients (FSDP2, tensor parallel) give the norm of the whole,
    unsharded gradient, the same on every rank. Returns a 0-dim tensor on the device of the first
    gradient, float64 when any gradient is float64 and float32 otherwise (0.0 when ``grads`` is
    empty). For ``norm_type <= 0`` (or nan) it follows torch's definition (the norm of the
    per-tensor norms).
    """
    if len(grads) == 0:
        return torch.tensor(0.0)
    if torch.is_grad_enabled():  # a no_grad context costs more than the check
        with torch.no_grad():
            return total_norm(grads, norm_type)
    if not _is_regular(norm_type):
        if any_dtensor(grads):
            return total_norms([grads], norm_type)[0]  # raises the sharded error
        return _torch_formula_norm(grads, norm_type, result_dtype(grads))
    if torch.compiler.is_compiling() and not any_dtensor(grads):
        # Inside torch.compile (fullgraph included): no data-dependent branch or host read; the
        # per-tensor norms in the accumulation dtype, combined as torch does.
        return _compiled_norm(grads, norm_type, result_dtype(grads))
    return total_norms([grads], norm_type)[0]
