"""Rank body for test_fsdp1_dist.py: every traintech entry point on a real FSDP1 model."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

import traintech.clip as tc


def _model(use_orig_params: bool) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    return FSDP(model, device_id=torch.device("cpu"), use_orig_params=use_orig_params)


def _error(fn: Any) -> str:
    try:
        fn()
    except ValueError as exc:
        return str(exc)
    return "no error"


def refusals(rank: int, world_size: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for uop in (False, True):
        model = _model(uop)
        torch.manual_seed(rank)  # each rank its own batch, as in data-parallel training
        model(torch.randn(4, 5)).pow(2).sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        cases = {
            "per_layer_module": lambda m=model: tc.clip_grad_norm_per_layer_(m, 1.0),
            "AGC_module": lambda m=model: tc.AGC()(m),
        }
        if not uop:
            cases.update(
                {
                    "clip_grad_norm_": lambda m=model: tc.clip_grad_norm_(m.parameters(), 1.0),
                    "NormClip": lambda m=model: tc.NormClip(1.0)(m.parameters()),
                    "ZClip": lambda m=model: tc.ZClip()(m.parameters()),
                    "GuardedStep": lambda m=model: tc.GuardedStep(
                        torch.optim.SGD(m.parameters(), lr=0.1), tc.NormClip(1.0)
                    ),
                }
            )
        out[f"uop={uop}"] = {name: _error(fn) for name, fn in cases.items()}
        after = [p.grad for p in model.parameters() if p.grad is not None]
        out[f"uop={uop} untouched"] = all(
            torch.equal(a, b) for a, b in zip(grads, after, strict=True)
        )
        if not uop:
            # What FSDP1's own clip computes (global) against one rank's shard norm (local).
            out["shard_norm"] = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads]))
            out["fsdp_norm"] = model.clip_grad_norm_(1e9)  # a bound that changes nothing
    return out
