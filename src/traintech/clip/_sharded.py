r"""Norms of sharded (FSDP2 / DTensor) gradients: local partials, one packed all-reduce.

Every norm in :mod:`traintech.clip` goes through :func:`traintech.clip._norm.total_norm`, which
hands gradients that include a DTensor to :func:`sharded_total_norms`; per-layer clipping hands
all its layers at once, so a step costs one all-reduce whatever the number of layers.

.. math::
    \|g\|_p = \Big(\sum_{r} \sum_{\text{shards on } r} |g_{ij}|^p\Big)^{1/p}, \qquad
    \|g\|_\infty = \max_r \max_{\text{shards on } r} |g_{ij}|

Each rank reduces its local shards with the same accurate float64 partial sums as the
single-process path, the partials are all-reduced (SUM, or MAX for ``inf``) over the process
groups the tensors are sharded across (see :mod:`traintech._distributed`; replicated mesh
dimensions are not reduced, so nothing is counted twice), and then the root is taken. The
result is the same on every rank.
"""

from __future__ import annotations

import torch
from torch import Tensor

from traintech._distributed import (
    ReduceKey,
    all_reduce_packed,
    any_dtensor,
    is_dtensor,
    reduce_key,
)


def has_dtensor(tensors: list[Tensor]) -> bool:
    """Whether any of ``tensors`` is a DTensor (free when DTensor was never imported)."""
    return any_dtensor(tensors)


def sharded_total_norms(groups: list[list[Tensor]], norm_type: float) -> list[Tensor]:
    """The global ``norm_type``-norm of each list of (possibly DTensor) gradients.

    Args:
        groups: lists of gradients; each list's norm is that of its tensors viewed as one vector.
        norm_type: ``p`` in ``(0, inf]``.

    Returns:
        One 0-dim tensor per list, identical on every rank: float64 when a gradient is float64,
        else float32, on the device of the list's first gradient (0.0 for an empty list).

    Raises:
        ValueError: for ``norm_type <= 0`` (torch's per-tensor definition has no sharded form),
            or a gradient with a ``Partial`` placement.
    """
    from traintech.clip._norm import is_inf_norm, partial_power_sums, result_dtype

    if not norm_type > 0:
        raise ValueError(
            f"norm_type must be > 0 for sharded (DTensor) gradients, got {norm_type}: torch's "
            "definition for p <= 0 combines per-tensor norms, which have no sharded form"
        )
    inf = is_inf_norm(norm_type)
    values: list[Tensor] = []
    keys: list[ReduceKey] = []
    owners: list[int] = []
    for index, grads in enumerate(groups):
        by_key: dict[ReduceKey, list[Tensor]] = {}
        for g in grads:
            local = g.to_local() if is_dtensor(g) else g  # type: ignore[attr-defined]
            by_key.setdefault(reduce_key(g), []).append(local)
        for key, local_grads in by_key.items():
            nonempty = [t for t in local_grads if t.numel() > 0]
            device = local_grads[0].device
            if nonempty:
                partials = partial_power_sums(nonempty, norm_type)
                stacked = torch.stack([p.to(device) for p in partials])
                value = stacked.max() if inf else stacked.sum()
            else:  # an uneven shard can leave a rank with nothing of these tensors
                value = torch.zeros((), dtype=torch.float64, device=device)
            values.append(value.to(torch.float64))
            keys.append(key)
            owners.append(index)
    reduced = all_reduce_packed(values, keys, "max" if inf else "sum")
    out = []
    for index, grads in enumerate(groups):
        mine = [v for v, owner in zip(reduced, owners, strict=True) if owner == index]
        if not mine:
            out.append(torch.zeros(()))
            continue
        device = grads[0].device
        stacked = torch.stack([v.to(device) for v in mine])
        total = stacked.max() if inf else stacked.sum().pow(1.0 / norm_type)
        out.append(total.to(result_dtype(grads)))
    return out
