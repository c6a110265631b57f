"""Rank-side code of the norm layers' tensor/sequence-parallel test (run by ``_worker_main.py``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import SequenceParallel, parallelize_module

import traintech.norm as tn


def _full(t: Any) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def sequence_parallel(rank: int, world_size: int) -> dict[str, float]:
    """Max abs difference of ours (SequenceParallel) against torch's, sharded and unsharded.

    For each layer: the output and the input/weight gradients of our layer under
    ``parallelize_module(..., SequenceParallel())`` (DTensor activations sharded on the sequence
    dim) against torch's layer under the same plan and against torch's layer on the full batch.
    """
    mesh = init_device_mesh("cpu", (world_size,))
    gen = torch.Generator().manual_seed(0)
    seq = 3 * world_size
    x = torch.randn(2, seq, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(2, seq, 8, generator=gen, dtype=torch.float64)
    w = torch.randn(8, generator=gen, dtype=torch.float64)
    local = slice(rank * 3, rank * 3 + 3)
    errors: dict[str, float] = {}
    makers = {
        "LayerNorm": lambda lib: lib.LayerNorm(8),
        "RMSNorm": lambda lib: lib.RMSNorm(8, eps=1e-6),
        "RMSNorm-no-affine": lambda lib: lib.RMSNorm(8, elementwise_affine=False),
    }
    for name, make in makers.items():
        runs = []
        for lib, parallel in ((tn, True), (nn, True), (nn, False)):
            layer = make(lib).double()
            if layer.weight is not None:
                with torch.no_grad():
                    layer.weight.copy_(w)
            if parallel:
                parallelize_module(layer, mesh, SequenceParallel())
                xi = x[:, local].clone().requires_grad_()
                out = layer(xi)
                assert isinstance(out, DTensor), type(out)
                (out.to_local() * v[:, local]).sum().backward()
                dx = torch.zeros_like(x)
                dx[:, local] = xi.grad
                torch.distributed.all_reduce(dx)
            else:
                xi = x.clone().requires_grad_()
                out = layer(xi)
                (out * v).sum().backward()
                dx = xi.grad
            dw = None if layer.weight is None else _full(layer.weight.grad)
            runs.append((_full(out), dx, dw))
        for label, other in (("vs-torch-sp", runs[1]), ("vs-torch-full", runs[2])):
            for part, a, b in zip(("out", "dx", "dw"), runs[0], other, strict=True):
                if a is not None:
                    errors[f"{name} {label} {part}"] = float((a - b).abs().max())
    return errors


def sync_bn_double_backward(rank: int, world_size: int) -> dict[str, Any]:
    """First-order gradients across ranks work; ``create_graph=True`` is refused loudly."""
    gen = torch.Generator().manual_seed(rank)
    layer = tn.SyncBatchNorm(3).double()
    x = torch.randn(4, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(layer(x).pow(3).sum(), x)
    try:
        torch.autograd.grad(layer(x).pow(3).sum(), x, create_graph=True)
    except RuntimeError as err:
        message = str(err)
    else:
        message = ""
    return {"first_order_finite": bool(gx.isfinite().all()), "message": message}
