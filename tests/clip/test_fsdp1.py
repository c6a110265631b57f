"""FSDP1 (FullyShardedDataParallel) gradients are per-rank flat shards: every entry point refuses
them with a message that names the fix, instead of clipping each rank by its own shard's norm.

The real FSDP1 model runs in ``tests/distributed/test_fsdp1_dist.py``; here a parameter carries
FSDP1's own marker, which is what ``isinstance(p, FlatParameter)`` tests.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import traintech.clip as tc

FIX = r"FSDP1 .*clip_grad_norm_\(max_norm\).*FSDP2"


@pytest.fixture
def flat_model() -> nn.Module:
    from torch.distributed.fsdp._flat_param import FlatParameter

    model = nn.Linear(3, 2)
    model.weight._is_flat_param = True  # type: ignore[attr-defined]  # FSDP1's own marker
    assert isinstance(model.weight, FlatParameter)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    return model


ENTRY_POINTS = {
    "clip_grad_norm_": lambda m: tc.clip_grad_norm_(m.parameters(), 1.0),
    "grad_norm": lambda m: tc.grad_norm(m.parameters()),
    "per_layer": lambda m: tc.clip_grad_norm_per_layer_(m.named_parameters(), 1.0),
    "NormClip": lambda m: tc.NormClip(1.0)(m.parameters()),
    "ValueClip": lambda m: tc.ValueClip(1.0)(m.parameters()),
    "ZClip": lambda m: tc.ZClip()(m.parameters()),
    "AGC": lambda m: tc.AGC()(m),
    "AGC bound": lambda m: tc.AGC(parameters=m.parameters()),
    "GuardedStep": lambda m: tc.GuardedStep(torch.optim.SGD(m.parameters(), lr=0.1)),
}


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_fsdp1_flat_parameters_are_refused_before_anything_changes(flat_model, name):
    before = [p.grad.clone() for p in flat_model.parameters()]
    with pytest.raises(ValueError, match=r"parameters\[0\] is an FSDP1 FlatParameter of shape"):
        ENTRY_POINTS[name](flat_model)
    with pytest.raises(ValueError, match=FIX):
        ENTRY_POINTS[name](flat_model)
    for p, b in zip(flat_model.parameters(), before, strict=True):
        assert torch.equal(p.grad, b)


def test_plain_parameters_are_untouched_by_the_check():
    # Importing FSDP must not change anything for ordinary parameters.
    import torch.distributed.fsdp  # noqa: F401

    w = nn.Parameter(torch.zeros(2))
    w.grad = torch.tensor([3.0, 4.0])
    assert tc.clip_grad_norm_([w], 1.0).item() == 5.0
