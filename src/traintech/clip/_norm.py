"""Gradient collection and total-norm computation shared by every clipper."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

ParamsLike = Tensor | Iterable[Tensor]


def collect_grads(parameters: ParamsLike) -> list[Tensor]:
    """Return the ``.grad`` of each parameter that has one, in order.

    Accepts a single tensor, a list or any iterable (a generator is consumed once).

    Raises:
        TypeError: if an element of ``parameters`` is not a tensor.
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads: list[Tensor] = []
    for index, p in enumerate(parameters):
        if not isinstance(p, Tensor):
            raise TypeError(
                f"parameters[{index}] is a {type(p).__name__}; expected torch.Tensor "
                "(pass model.parameters() or a list of tensors)"
            )
        if p.grad is not None:
            grads.append(p.grad)
    return grads


def total_norm(grads: list[Tensor], norm_type: float = 2.0) -> Tensor:
    r"""The ``norm_type``-norm of all ``grads`` viewed as one vector, accumulated in float32.

    .. math::
        \|g\|_p = \Big(\sum_i \sum_j |g_{ij}|^p\Big)^{1/p},
        \qquad \|g\|_\infty = \max_{i,j} |g_{ij}|

    Low-precision gradients (fp16/bf16) are reduced in float32, so large fp16 gradients do not
    overflow the norm. Returns a 0-dim float32 tensor on the device of the first gradient
    (0.0 when ``grads`` is empty).
    """
    if len(grads) == 0:
        return torch.tensor(0.0)
    device = grads[0].device
    acc_dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    norms = [torch.linalg.vector_norm(g, norm_type, dtype=acc_dtype).to(device) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


def is_inf_norm(norm_type: float) -> bool:
    """Whether ``norm_type`` selects the max-norm."""
    return math.isinf(norm_type) and norm_type > 0
