r"""Cross-process primitives for clipping under ``torch.distributed`` (DDP, FSDP2/DTensor).

Norms of sharded gradients must be computed over the whole, unsharded gradient: every rank
reduces its local shard to a partial result (a power sum :math:`\sum |g|^p`, or a maximum for
:math:`p = \infty`), the partials are all-reduced over the process groups the tensor is sharded
across, and only then is the root taken. This module finds those groups from a DTensor's
placements and performs the all-reduce with as few collectives as possible: one per distinct
process group per call, whatever the number of tensors (all partials are packed).

Placements of a DTensor, per mesh dimension:

- ``Shard(d)`` (FSDP2, tensor/sequence parallel, strided shards): the mesh dimension's group
  holds disjoint pieces; partials are summed (max for ``inf``) across it.
- ``Replicate()`` (DDP-style data parallel, HSDP's replica dimension): every rank holds the same
  values; no reduction (reducing would count each element once per replica).
- ``Partial()``: the ranks hold addends of the gradient, not pieces of it; the norm of a sum is
  not a function of the addends' norms, so this is refused with a ``ValueError``.

Plain tensors (DDP, single process) are taken as replicated: after DDP's all-reduce every rank
has the same gradient, so the local norm is already the global one.

Nothing here imports ``torch.distributed.tensor`` or initializes a process group: a DTensor can
only exist once that module was imported, so its absence from ``sys.modules`` means "no DTensor".
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from traintech._compat import fsdp1_flat_param_type, fsdp1_module_type

__all__ = [
    "ReduceKey",
    "all_ranks_any",
    "all_reduce_packed",
    "any_dtensor",
    "is_dtensor",
    "is_distributed",
    "local_tensor",
    "local_tensors",
    "reduce_key",
    "refuse_fsdp1",
    "refuse_fsdp1_module",
]

#: Process groups a partial result is reduced over, in mesh-dimension order; ``()`` = none.
ReduceKey = tuple[Any, ...]


def _dtensor_type() -> type | None:
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None) if module is not None else None


def any_dtensor(tensors: Sequence[Tensor]) -> bool:
    """Whether any of ``tensors`` is a DTensor (one dictionary lookup when none can exist).

    Once ``torch.distributed.tensor`` is imported (``torch.testing``, Lightning and transformers
    import it) an ``isinstance`` check against DTensor costs about 0.4 us; plain tensors are
    recognised by their exact type first, so a list of ordinary gradients stays cheap.
    """
    cls = _dtensor_type()
    if cls is None:
        return False
    plain = Tensor
    return any(type(t) is not plain and isinstance(t, cls) for t in tensors)


def is_dtensor(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a ``torch.distributed.tensor.DTensor`` (never imports it)."""
    cls = _dtensor_type()
    return cls is not None and type(tensor) is not Tensor and isinstance(tensor, cls)


def local_tensor(tensor: Tensor) -> Tensor:
    """The local shard of a DTensor (sharing its storage), or ``tensor`` itself."""
    if is_dtensor(tensor):
        return tensor.to_local()  # type: ignore[attr-defined]
    return tensor


def local_tensors(tensors: Sequence[Tensor]) -> list[Tensor]:
    """:func:`local_tensor` of each element (a fast no-op when no DTensor can exist)."""
    if not any_dtensor(tensors):
        return list(tensors)
    return [local_tensor(t) for t in tensors]


def is_distributed() -> bool:
    """Whether a default process group with more than one rank is initialized."""
    import torch.distributed as dist

    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def reduce_key(tensor: Tensor, reduced_dims: Sequence[int] | None = None) -> ReduceKey:
    """Process groups over which a partial result of ``tensor`` must be reduced.

    Args:
        tensor: a gradient or parameter; plain tensors give ``()``.
        reduced_dims: tensor dimensions the partial result reduces over (all when None). A mesh
            dimension that shards a tensor dimension not in ``reduced_dims`` needs no reduction:
            e.g. unit-wise (per output row) norms of a tensor sharded on dim 0 are local.

    Raises:
        ValueError: for a ``Partial`` placement (pending reduction), or an unknown placement.
    """
    if not is_dtensor(tensor):
        return ()
    mesh = tensor.device_mesh  # type: ignore[attr-defined]
    placements = tensor.placements  # type: ignore[attr-defined]
    ndim = tensor.dim()
    wanted: set[int] | None = None
    if reduced_dims is not None:
        wanted = {d % ndim for d in reduced_dims} if ndim else set()
    groups = []
    for mesh_dim, placement in enumerate(placements):
        if placement.is_replicate():
            continue
        if placement.is_shard():
            dim = getattr(placement, "dim", None)
            if wanted is None or dim is None or dim % ndim in wanted:
                groups.append(mesh.get_group(mesh_dim))
            continue
        if placement.is_partial():
            raise ValueError(
                f"gradient of shape {tuple(tensor.shape)} has a Partial placement ({placement}) "
                f"on mesh dimension {mesh_dim}: its ranks hold unreduced addends, whose norm is "
                "not the norm of the gradient; reduce it first (e.g. grad.redistribute(placements="
                "[Replicate() or Shard(d)])) before clipping"
            )
        raise ValueError(
            f"gradient of shape {tuple(tensor.shape)} has placement {placement!r} on mesh "
            f"dimension {mesh_dim}; supported placements are Shard(d) and Replicate()"
        )
    return tuple(groups)


def all_reduce_packed(
    tensors: Sequence[Tensor], keys: Sequence[ReduceKey], op: str
) -> list[Tensor]:
    """All-reduce each tensor over the process groups of its key, packing to save collectives.

    Every tensor whose key contains a given process group is flattened into one buffer, which is
    all-reduced once over that group; a tensor reduced over several groups (a 2-D mesh) is
    reduced over each in turn, which reduces it over their product. So the number of collectives
    is the number of distinct groups, not the number of tensors. With ``op="max"`` a NaN on any
    rank makes the result NaN on every rank (a flag travels in the same buffer), so ranks never
    disagree about a non-finite value.

    Args:
        tensors: values to reduce (0-dim partials or per-row partial vectors); not modified.
        keys: one :data:`ReduceKey` per tensor (from :func:`reduce_key`).
        op: ``"sum"`` or ``"max"``.

    Returns:
        The reduced tensors (new tensors; those with an empty key are returned as given).

    Raises:
        ValueError: if ``op`` is not ``"sum"`` or ``"max"``, or the lengths differ.
    """
    if op not in ("sum", "max"):
        raise ValueError(f"op must be 'sum' or 'max', got {op!r}")
    if len(tensors) != len(keys):
        raise ValueError(f"tensors ({len(tensors)}) and keys ({len(keys)}) differ in length")
    out = list(tensors)
    order: list[Any] = []
    for key in keys:
        for group in key:
            if not any(group is seen for seen in order):
                order.append(group)
    if not order:
        return out
    import torch.distributed as dist

    reduce_op = dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX
    for group in order:
        members = [i for i, key in enumerate(keys) if any(g is group for g in key)]
        flat = [out[i].reshape(-1) for i in members]
        dtype = torch.promote_types(flat[0].dtype, torch.float32)
        buffer = torch.cat([f.to(dtype) for f in flat])
        if op == "max":
            buffer = torch.cat([buffer, buffer.isnan().to(dtype)])
        dist.all_reduce(buffer, op=reduce_op, group=group)
        if op == "max":
            half = buffer.numel() // 2
            buffer = torch.where(buffer[half:] > 0, torch.nan, buffer[:half])
        for i, piece in zip(members, buffer.split([f.numel() for f in flat]), strict=True):
            out[i] = piece.view(out[i].shape).to(out[i].dtype)
    return out


def all_ranks_any(flag: Tensor | bool, group: Any = None) -> Tensor:
    """Whether ``flag`` is true on any rank of ``group`` (the default group when None).

    One tiny all-reduce (MAX) when a process group with more than one rank is initialized;
    otherwise ``flag`` itself, so single-process code pays nothing. Every rank of the group
    must call it, in the same order relative to its other collectives.

    Returns:
        0-dim bool tensor, the same on every rank, on ``flag``'s device.
    """
    flag = torch.as_tensor(flag)
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return flag.bool().reshape(())
    value = flag.reshape(()).to(torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return value.bool()


_FSDP1_FIX = (
    "FSDP1 (FullyShardedDataParallel) gradients are each rank's flat shard, so a norm computed "
    "here would be this rank's shard's norm, not the model's. Use the wrapper's own "
    "model.clip_grad_norm_(max_norm) (it all-reduces the shards' norms), or shard with FSDP2 "
    "(torch.distributed.fsdp.fully_shard), whose DTensor gradients traintech reduces correctly"
)


def refuse_fsdp1(params: Sequence[Tensor]) -> None:
    """Raise if any of ``params`` is an FSDP1 ``FlatParameter`` (free when FSDP is not imported).

    Raises:
        ValueError: naming the first flat parameter's position and pointing to the fix.
    """
    flat = fsdp1_flat_param_type()
    if flat is None:
        return
    for index, p in enumerate(params):
        if isinstance(p, flat):
            raise ValueError(
                f"parameters[{index}] is an FSDP1 FlatParameter of shape {tuple(p.shape)}: "
                + _FSDP1_FIX
            )


def refuse_fsdp1_module(module: nn.Module) -> None:
    """Raise if ``module`` is, or contains, an FSDP1 ``FullyShardedDataParallel`` wrapper.

    This also catches ``use_orig_params=True``, whose parameters are plain views of the shards.

    Raises:
        ValueError: naming the wrapped submodule and pointing to the fix.
    """
    fsdp = fsdp1_module_type()
    if fsdp is None:
        return
    for name, sub in module.named_modules():
        if isinstance(sub, fsdp):
            raise ValueError(f"module {name or '(root)'!r} is wrapped in FSDP1: " + _FSDP1_FIX)
