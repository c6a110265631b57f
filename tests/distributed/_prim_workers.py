"""Rank-side code of the tests of ``traintech._distributed`` (run by ``_worker_main.py``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import (
    DTensor,
    Partial,
    Replicate,
    Shard,
    distribute_tensor,
    init_device_mesh,
)

from traintech import _distributed as D


def _count_all_reduce(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, int]:
    calls = 0
    original = dist.all_reduce

    def counting(*a: Any, **k: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(*a, **k)

    dist.all_reduce = counting
    try:
        return fn(*args, **kwargs), calls
    finally:
        dist.all_reduce = original


def primitives(rank: int, world_size: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3), nn.Linear(3, 1))
    fully_shard(model)
    model(torch.randn(6, 5)).pow(2).sum().backward()
    grads = [p.grad for p in model.parameters()]
    out["all_dtensor"] = all(D.is_dtensor(g) for g in grads)
    out["local_shapes"] = [tuple(g.shape) for g in D.local_tensors(grads)]
    out["full"] = [g.full_tensor().double() for g in grads]
    keys = [D.reduce_key(g) for g in grads]
    out["n_groups"] = len({id(group) for key in keys for group in key})
    out["key_lengths"] = [len(k) for k in keys]
    for p in (1.0, 2.0, 3.0):
        partials = [D.local_tensor(g).double().abs().pow(p).sum() for g in grads]
        reduced, calls = _count_all_reduce(D.all_reduce_packed, partials, keys, "sum")
        out[f"power_sum_{p}"] = torch.stack(reduced).sum()
        out[f"calls_{p}"] = calls
    maxima = [
        D.local_tensor(g).abs().amax() if D.local_tensor(g).numel() else torch.zeros(())
        for g in grads
    ]
    out["max"] = torch.stack(D.all_reduce_packed(maxima, keys, "max")).max()
    # Unit-wise (per output row) partials: rows of a dim-0 shard are local, 1-D tensors are not.
    out["unit_key_lengths"] = [
        len(D.reduce_key(g, reduced_dims=range(1, g.dim()) if g.dim() > 1 else None)) for g in grads
    ]
    # NaN on one rank only: MAX must give NaN everywhere; SUM too.
    value = torch.tensor(float("nan") if rank == 1 else 1.0)
    out["nan_max"] = D.all_reduce_packed([value], [keys[0]], "max")[0]
    out["nan_sum"] = D.all_reduce_packed([value], [keys[0]], "sum")[0]
    out["any_true"] = D.all_ranks_any(torch.tensor(rank == world_size - 1))
    out["any_false"] = D.all_ranks_any(False)
    mesh = grads[0].device_mesh
    rep = distribute_tensor(torch.arange(6.0).view(2, 3), mesh, [Replicate()])
    out["replicate_key"] = D.reduce_key(rep)
    partial = DTensor.from_local(torch.ones(2), mesh, [Partial()])
    try:
        D.reduce_key(partial)
        out["partial_error"] = "no error"
    except ValueError as error:
        out["partial_error"] = str(error)
    # A 2-D mesh (1 x world): Replicate on the first dim, Shard on the second; and sharded on both.
    mesh2 = init_device_mesh("cpu", (1, world_size), mesh_dim_names=("dp", "tp"))
    full = torch.arange(35.0).view(7, 5) - 17
    tensors = [
        distribute_tensor(full, mesh2, [Replicate(), Shard(0)]),
        distribute_tensor(full, mesh2, [Shard(1), Shard(1)]),
        distribute_tensor(full, mesh2, [Replicate(), Replicate()]),
        distribute_tensor(full, mesh2, [Shard(0), Shard(1)]),
    ]
    keys2 = [D.reduce_key(t) for t in tensors]
    out["mesh2_key_lengths"] = [len(k) for k in keys2]
    partials2 = [D.local_tensor(t).double().pow(2).sum() for t in tensors]
    reduced2, calls2 = _count_all_reduce(D.all_reduce_packed, partials2, keys2, "sum")
    out["mesh2_power_sums"] = torch.stack(reduced2)
    out["mesh2_calls"] = calls2
    out["mesh2_expected"] = full.double().pow(2).sum()
    out["mesh2_unit_key_lengths"] = [len(D.reduce_key(t, reduced_dims=[1])) for t in tensors]
    out["errors"] = _clip_errors(model, mesh)
    return out


def _clip_errors(model: nn.Module, mesh: Any) -> dict[str, str]:
    """What traintech.clip says for what it cannot do on sharded gradients."""
    from traintech.clip import clip_grad_norm_

    errors = {}
    try:
        clip_grad_norm_(model.parameters(), 1.0, norm_type=0.0)
        errors["norm_type_0"] = "no error"
    except ValueError as error:
        errors["norm_type_0"] = str(error)
    param = nn.Parameter(DTensor.from_local(torch.zeros(2), mesh, [Partial()]))
    param.grad = DTensor.from_local(torch.ones(2), mesh, [Partial()])
    try:
        clip_grad_norm_([param], 1.0)
        errors["partial"] = "no error"
    except ValueError as error:
        errors["partial"] = str(error)
    return errors
