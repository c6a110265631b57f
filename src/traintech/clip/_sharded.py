r"""Where a gradient's partial norm must be reduced: local shards keyed by their process groups.

The total norm (:mod:`traintech.clip._norm`) reduces each gradient to a *partial* result on the
rank that holds it, then all-reduces the partials once. This module answers the one question
that differs between a plain tensor and a sharded one (FSDP2, tensor parallel: a DTensor):
which local values to reduce, and over which process groups.

.. math::
    \|g\|_p = \Big(\sum_{r} \sum_{\text{shards on } r} |g_{ij}|^p\Big)^{1/p}, \qquad
    \|g\|_\infty = \max_r \max_{\text{shards on } r} |g_{ij}|

A DTensor contributes its local shard, keyed by the process groups of the mesh dimensions that
shard it (:func:`traintech._distributed.reduce_key`; replicated mesh dimensions are not reduced,
so nothing is counted twice). A plain tensor (single process, or DDP after its all-reduce) has
the empty key: its partial is already global. This module imports nothing from
:mod:`traintech.clip`; the norm imports it.
"""

from __future__ import annotations

from torch import Tensor

from traintech._distributed import ReduceKey, any_dtensor, local_tensor, reduce_key

#: The key of a partial that needs no cross-process reduction.
LOCAL: ReduceKey = ()


def split_by_reduce_key(grads: list[Tensor]) -> list[tuple[ReduceKey, list[Tensor]]]:
    """Group ``grads`` by the process groups their partials are reduced over.

    Returns ``[(key, local tensors), ...]`` in first-seen order: DTensors replaced by their local
    shards (sharing storage), plain tensors under the key ``()``. Without a DTensor this is
    ``[((), grads)]`` at the cost of one dictionary lookup.

    Raises:
        ValueError: for a gradient with a ``Partial`` placement (its ranks hold addends).
    """
    if not any_dtensor(grads):
        return [(LOCAL, grads)]
    by_key: dict[ReduceKey, list[Tensor]] = {}
    for g in grads:
        by_key.setdefault(reduce_key(g), []).append(local_tensor(g))
    return list(by_key.items())
