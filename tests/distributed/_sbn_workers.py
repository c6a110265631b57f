"""Rank-side code of the SyncBatchNorm tests (run by ``_worker_main.py``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from traintech.norm import SyncBatchNorm, convert_sync_batchnorm


def _batches(sc: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The full (all ranks') inputs and upstream gradients of every step, same on every rank."""
    g = torch.Generator().manual_seed(sc["seed"])
    n = sum(sc["splits"])
    shape = (n, sc["channels"], *sc["spatial"])
    xs = [torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 2 for _ in range(sc["steps"])]
    rs = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(sc["steps"])]
    return xs, rs


def sync_bn(rank: int, world_size: int, scenarios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run each scenario: ``steps`` training steps then one eval step on this rank's slice."""
    results = []
    for sc in scenarios:
        dtype = getattr(torch, sc["dtype"])
        xs, rs = _batches(sc)
        start = sum(sc["splits"][:rank])
        stop = start + sc["splits"][rank]
        bn = SyncBatchNorm(
            sc["channels"],
            momentum=sc["momentum"],
            affine=sc["affine"],
            track_running_stats=sc["track"],
            dtype=torch.float64 if dtype == torch.float64 else None,
        )
        g = torch.Generator().manual_seed(sc["seed"] + 1)
        if bn.weight is not None and bn.bias is not None:
            with torch.no_grad():
                bn.weight.copy_(torch.rand(sc["channels"], generator=g, dtype=torch.float64) + 0.5)
                bn.bias.copy_(torch.randn(sc["channels"], generator=g, dtype=torch.float64))
        init = {k: v.clone() for k, v in bn.state_dict().items()}
        steps = []
        for x_full, r_full in zip(xs, rs, strict=True):
            x = x_full[start:stop].to(dtype).requires_grad_(True)
            y = bn(x)
            (y.to(torch.float64) * r_full[start:stop]).sum().backward()
            steps.append(
                {
                    "y": y.detach(),
                    "x_grad": x.grad,
                    "w_grad": None if bn.weight is None else bn.weight.grad.clone(),
                    "b_grad": None if bn.bias is None else bn.bias.grad.clone(),
                }
            )
            bn.zero_grad()
        bn.eval()
        y_eval = bn(xs[0][start:stop].to(dtype)).detach()
        results.append(
            {
                "init": init,
                "steps": steps,
                "state": {k: v.clone() for k, v in bn.state_dict().items()},
                "y_eval": y_eval,
                "xs": xs,
                "rs": rs,
            }
        )
    return results


def ddp_convert(rank: int, world_size: int, steps: int, per_rank: int) -> dict[str, Any]:
    """A Conv-BN model converted with ``convert_sync_batchnorm``, trained under DDP with SGD."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
    )
    model = convert_sync_batchnorm(model)
    assert isinstance(model[1], SyncBatchNorm)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(per_rank * world_size, 2, 4, 4, generator=g)
        t = torch.randn(per_rank * world_size, 3, generator=g)
        sl = slice(rank * per_rank, (rank + 1) * per_rank)
        loss = ((ddp(x[sl]) - t[sl]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    dist.barrier()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def one_value_per_channel(rank: int, world_size: int) -> str:
    """Rank 0 holds one sample, the others none: every rank must raise the same ValueError."""
    bn = SyncBatchNorm(2)
    try:
        bn(torch.randn(1 if rank == 0 else 0, 2))
    except ValueError as error:
        return str(error)
    return "no error"


def suite(
    rank: int,
    world_size: int,
    scenarios: list[dict[str, Any]],
    ddp: dict[str, int] | None = None,
    one_value: bool = False,
    subgroup: list[int] | None = None,
) -> dict[str, Any]:
    """Everything one launch checks (a process launch costs seconds; the checks, milliseconds)."""
    out: dict[str, Any] = {"scenarios": sync_bn(rank, world_size, scenarios)}
    if subgroup is not None:
        out["subgroup"] = subgroup_bn(rank, subgroup)
    if ddp is not None:
        out["ddp"] = ddp_convert(rank, world_size, **ddp)
    if one_value:
        out["one_value"] = one_value_per_channel(rank, world_size)
    return out


def subgroup_bn(rank: int, members: list[int]) -> dict[str, torch.Tensor] | None:
    """SyncBatchNorm over a subgroup: ranks outside it must not take part in the statistics."""
    group = dist.new_group(members)  # every rank calls new_group
    g = torch.Generator().manual_seed(7)
    full = torch.randn(3 * len(members), 2, 5, generator=g)
    if rank not in members:
        return None
    position = members.index(rank)
    x = full[3 * position : 3 * (position + 1)]
    bn = SyncBatchNorm(2, process_group=group)
    return {"full": full, "y": bn(x).detach(), "running_var": bn.running_var.clone()}
