r"""AGC on sharded (FSDP2 / DTensor) parameters: unit-wise norms of the whole, unsharded units.

AGC bounds each output unit (row :math:`i` of dim 0; the whole tensor for 0-/1-D parameters):

.. math::
    G_i \leftarrow G_i \cdot \min\Big(1, \frac{\lambda \max(\|W_i\|, \epsilon)}
        {\max(\|G_i\|, 10^{-6})}\Big)

A unit's norms need a cross-rank reduction only over the mesh dimensions that shard the unit
itself: FSDP2 shards dim 0, so the rows of a 2-D weight are whole on one rank (no
communication), while a sharded bias or gain (a 1-D tensor is one unit) is reduced. Tensor
parallel placements that split rows (``Shard(1)``) are reduced the same way. All unit partials
of a step, plus the row-local tensors' contributions to the reported total norms, travel in one
packed all-reduce; only meshes that shard both a unit and the rows need a second one (for the
totals). Uneven and empty shards are exact: each rank reduces what it holds.
"""

from __future__ import annotations

import torch
from torch import Tensor

from traintech._constants import NORM_EPS
from traintech._distributed import ReduceKey, all_reduce_packed, local_tensor, reduce_key


def _unit_sq(x: Tensor, acc: torch.dtype) -> Tensor:
    """Sum of squares per unit (keepdim rows for ndim > 1, a 0-dim total otherwise)."""
    if x.dim() <= 1:
        return x.to(acc).square().sum()
    return x.to(acc).square().sum(dim=tuple(range(1, x.dim())), keepdim=True)


def _unit_dims(x: Tensor) -> list[int] | None:
    return None if x.dim() <= 1 else list(range(1, x.dim()))


def adaptive_clip_grad_sharded_(
    weights: list[Tensor], grads: list[Tensor], clip_factor: float, eps: float
) -> tuple[Tensor, Tensor]:
    """Clip each unit of ``grads`` (DTensors or plain) in place, with global unit norms.

    Returns:
        The global sums of squared gradient unit norms before and after clipping (0-dim, the
        same on every rank; float64 if a gradient is float64, else float32).
    """
    device = local_tensor(grads[0]).device
    acc = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    unit_keys = [reduce_key(g, _unit_dims(g)) for g in grads]
    row_keys: list[ReduceKey] = [() if g.dim() <= 1 else reduce_key(g, [0]) for g in grads]
    g_local = [local_tensor(g) for g in grads]
    w_local = [local_tensor(w.detach()) for w in weights]
    g_sq = [_unit_sq(g, acc) for g in g_local]
    w_sq = [_unit_sq(w, acc) for w in w_local]

    def clip(i: int) -> tuple[Tensor, Tensor]:
        g_norm, w_norm = g_sq[i].sqrt(), w_sq[i].sqrt()
        max_norm = w_norm.clamp(min=eps) * clip_factor
        ratio = max_norm / g_norm.clamp(min=NORM_EPS)
        coef = torch.where(g_norm < max_norm, torch.ones_like(ratio), ratio)
        g_local[i].mul_(coef.to(g_local[i].dtype))
        return g_sq[i].sum().to(device), (g_sq[i] * coef.square()).sum().to(device)

    totals: dict[ReduceKey, list[Tensor]] = {}

    def add(key: ReduceKey, pre: Tensor, post: Tensor) -> None:
        acc_pair = totals.setdefault(key, [torch.zeros((), dtype=acc, device=device)] * 2)
        totals[key] = [acc_pair[0] + pre, acc_pair[1] + post]

    # Units that are whole on this rank: clip now; their totals ride in the first all-reduce.
    sharded_units = [i for i, key in enumerate(unit_keys) if key]
    for i, key in enumerate(unit_keys):
        if not key:
            add(row_keys[i], *clip(i))
    first_keys = [row for row in totals]
    first = [torch.stack(totals[k]) for k in first_keys]
    payload = [g_sq[i] for i in sharded_units] + [w_sq[i] for i in sharded_units] + first
    keys = [unit_keys[i] for i in sharded_units] * 2 + first_keys
    reduced = all_reduce_packed(payload, keys, "sum")
    n = len(sharded_units)
    for j, i in enumerate(sharded_units):
        g_sq[i], w_sq[i] = reduced[j], reduced[n + j]
    pre = torch.zeros((), dtype=acc, device=device)
    post = torch.zeros((), dtype=acc, device=device)
    for pair in reduced[2 * n :]:
        pre, post = pre + pair[0], post + pair[1]
    # Units sharded across ranks: clip with the reduced norms; reduce their totals over the
    # groups that split their rows (none for 1-D tensors, so FSDP2 needs no second all-reduce).
    totals.clear()
    for i in sharded_units:
        add(row_keys[i], *clip(i))
    second_keys = list(totals)
    second = all_reduce_packed([torch.stack(totals[k]) for k in second_keys], second_keys, "sum")
    for pair in second:
        pre, post = pre + pair[0], post + pair[1]
    return pre, post
