"""Rank-side code of the distributed clipping tests; also the single-process reference.

``train(method, mode, rank, world_size, steps, nan_step)`` builds the same small model on every
rank, wraps it for ``mode`` ("single", "ddp" or "fsdp2"), trains ``steps`` SGD steps on this
rank's slice of a global batch with the clipping ``method``, and returns the full parameters,
the clipper's state_dict and what each step reported. The test module imports this file too
and runs ``mode="single"`` with ``rank=0, world_size=1`` (the whole batch) as the reference.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from traintech.clip import (
    AGC,
    EMAClip,
    GuardedStep,
    NormClip,
    QuantileClip,
    ValueClip,
    ZClip,
    clip_grad_norm_,
    clip_grad_norm_per_layer_,
)

GLOBAL_BATCH = 12  # divisible by 2 and 3 ranks
METHODS = [
    "clip_grad_norm_",
    "clip_grad_norm_inf",
    "clip_grad_norm_p3",
    "per_layer",
    "NormClip",
    "ValueClip",
    "EMAClip",
    "QuantileClip",
    "ZClip",
    "AGC",
    "guarded_ZClip",
    "guarded_fused_NormClip",
    "guarded_AGC",
]


def widths(mode: str) -> tuple[int, int]:
    """Hidden widths: odd for data parallel, so FSDP2's dim-0 shards are uneven (9 rows -> 5 + 4,
    3 rows -> 2 + 1); even for tensor parallel (torch's TP layers need even splits)."""
    return (8, 6) if mode == "tp" else (9, 5)


def make_model(hidden: tuple[int, int]) -> nn.Module:
    torch.manual_seed(0)
    h1, h2 = hidden
    return nn.Sequential(
        nn.Linear(6, h1), nn.Tanh(), nn.Linear(h1, h2), nn.Tanh(), nn.Linear(h2, 3)
    ).double()


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step``; step 5 is a spike (targets x20) for the adaptive clippers."""
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(GLOBAL_BATCH, 6, generator=g, dtype=torch.float64)
    y = torch.randn(GLOBAL_BATCH, 3, generator=g, dtype=torch.float64)
    return x, (y * 20 if step == 5 else y)


def _clipper(method: str, model: nn.Module) -> Any:
    return {
        "guarded_AGC": lambda: AGC(clip_factor=0.05, parameters=model),
        "NormClip": lambda: NormClip(0.5),
        "ValueClip": lambda: ValueClip(0.05),
        "EMAClip": lambda: EMAClip(factor=1.5, beta=0.9, warmup_steps=2),
        "QuantileClip": lambda: QuantileClip(quantile=0.5, window=4),
        "ZClip": lambda: ZClip(alpha=0.9, z_thresh=1.5, warmup_steps=3),
        "guarded_ZClip": lambda: ZClip(alpha=0.9, z_thresh=1.5, warmup_steps=3),
        "guarded_fused_NormClip": lambda: NormClip(0.5),
        "AGC": lambda: AGC(clip_factor=0.05),
    }.get(method, lambda: None)()


def _wrap(model: nn.Module, mode: str) -> nn.Module:
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    if mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        fully_shard(model[0])
        fully_shard(model)
    if mode == "tp":  # tensor parallel: column-wise then row-wise Linear, the head replicated
        import torch.distributed as dist
        from torch.distributed.tensor import init_device_mesh
        from torch.distributed.tensor.parallel import (
            ColwiseParallel,
            RowwiseParallel,
            parallelize_module,
        )

        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    return model


def _full(t: torch.Tensor) -> torch.Tensor:
    full = getattr(t, "full_tensor", None)
    return (full() if full is not None else t).detach().clone()


def _inject_nan(model: nn.Module, rank: int) -> None:
    """Put a NaN into this rank's part of the last layer's weight gradient."""
    grad = model[4].weight.grad
    local = grad.to_local() if hasattr(grad, "to_local") else grad
    local.view(-1)[0] = float("nan")


def train(
    method: str,
    mode: str,
    rank: int,
    world_size: int,
    steps: int,
    nan_step: int = -1,
    hidden: tuple[int, int] | None = None,
) -> dict[str, Any]:
    model = make_model(hidden or widths(mode))
    net = _wrap(model, mode)
    if "fused" in method:  # GuardedStep folds the coefficient into the fused step
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5, fused=True)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
    clipper = _clipper(method, model)
    guard = GuardedStep(opt, clipper) if method.startswith("guarded") else None
    per_rank = GLOBAL_BATCH // world_size
    # data parallel: this rank's slice of the batch; tensor parallel: every rank the whole batch
    mine = slice(None) if mode == "tp" else slice(rank * per_rank, (rank + 1) * per_rank)
    norms, skipped, clipped, fused = [], [], [], []
    for step in range(steps):
        x, y = data(step)
        loss = ((net(x[mine]) - y[mine]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        if step == nan_step and rank == world_size - 1:
            _inject_nan(model, rank)
        if guard is not None:
            report = guard.step()
            norms.append(report.norm.clone())
            skipped.append(bool(report.skipped))
            summary = getattr(clipper, "last_result", None) or report
            clipped.append(bool(summary.coef < 1))
            fused.append(report.fused)
            continue
        if method == "clip_grad_norm_":
            norm = clip_grad_norm_(model.parameters(), 0.5)
            clipped.append(bool(norm > 0.5))
        elif method == "clip_grad_norm_inf":
            norm = clip_grad_norm_(model.parameters(), 0.05, norm_type=float("inf"))
            clipped.append(bool(norm > 0.05))
        elif method == "clip_grad_norm_p3":
            norm = clip_grad_norm_(model.parameters(), 0.3, norm_type=3.0)
            clipped.append(bool(norm > 0.3))
        elif method == "per_layer":
            per = clip_grad_norm_per_layer_(model.named_parameters(), 0.2)
            norm = torch.stack([per[k] for k in sorted(per)])
            clipped.append(bool((norm > 0.2).any()))
        else:
            before = [p.grad.clone() for p in model.parameters()]
            result = clipper(model.named_parameters() if method == "AGC" else model.parameters())
            norm = result.norm
            after = [p.grad for p in model.parameters()]
            changed = any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
            clipped.append(changed)
        norms.append(norm.detach().clone())
        opt.step()
    params = {name: _full(p) for name, p in model.named_parameters()}
    return {
        "params": params,
        "state": None if clipper is None else clipper.state_dict(),
        "norms": norms,
        "skipped": skipped,
        "clipped": clipped,
        "fused": fused,
        "guard": None if guard is None else guard.state_dict(),
    }


def suite(rank: int, world_size: int, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every run of one launch (a process launch costs seconds; a run, milliseconds)."""
    return [train(rank=rank, world_size=world_size, **run) for run in runs]
