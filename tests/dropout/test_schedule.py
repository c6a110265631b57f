"""DropoutScheduler: rates over steps, layer types, state_dict resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import traintech.dropout as D


def _model() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(4, 4),
        nn.Dropout(0.4),
        D.Dropout(0.2),
        D.DropPath(0.1),
        D.DropConnect(nn.Linear(4, 4), 0.3),
        nn.Linear(4, 4),
    )


def _ref(shape: str, t: int, total: int, lo: float, hi: float) -> float:
    u = min(t / total, 1.0)
    s = {"linear": u, "cosine": (1 - math.cos(math.pi * u)) / 2, "step": float(u >= 1)}[shape]
    return lo + (hi - lo) * s


@pytest.mark.parametrize("shape", ["linear", "cosine", "step"])
def test_ramp_to_each_layers_rate(shape) -> None:
    model = _model()
    sched = D.DropoutScheduler(model, total_steps=5, shape=shape)
    bases = {"1": 0.4, "2": 0.2, "3": 0.1, "4": 0.3}
    for t in range(8):
        for name, base in bases.items():
            assert model.get_submodule(name).p == pytest.approx(_ref(shape, t, 5, 0.0, base))
        sched.step()


def test_early_dropout_goes_to_zero() -> None:
    model = _model()
    sched = D.DropoutScheduler(model, total_steps=3, start=None, end=0.0, shape="step")
    assert model[1].p == pytest.approx(0.4)
    for _ in range(3):
        sched.step()
    assert model[1].p == 0.0 and model[3].p == 0.0


def test_resume_from_state_dict() -> None:
    model = _model()
    sched = D.DropoutScheduler(model, total_steps=10, start=0.05, shape="cosine")
    for _ in range(3):
        sched.step()
    state = copy.deepcopy(sched.state_dict())
    assert state["_version"] == 1
    clone = _model()
    resumed = D.DropoutScheduler(clone, total_steps=99)
    resumed.load_state_dict(state)
    for _ in range(4):
        sched.step()
        resumed.step()
        assert resumed.get_rates() == sched.get_rates()
        for (_, a), (_, b) in zip(sched.layers, resumed.layers, strict=True):
            assert a.p == b.p


def test_load_rejects_bad_version_and_layers() -> None:
    sched = D.DropoutScheduler(_model(), total_steps=3)
    bad = sched.state_dict() | {"_version": 99}
    with pytest.raises(ValueError, match="_version"):
        sched.load_state_dict(bad)
    other = D.DropoutScheduler(nn.Sequential(nn.Dropout(0.1)), total_steps=3)
    with pytest.raises(ValueError, match="base_rates"):
        other.load_state_dict(sched.state_dict())


def test_scheduled_rate_is_used_in_forward() -> None:
    model = nn.Sequential(D.Dropout(0.5))
    sched = D.DropoutScheduler(model, total_steps=2)
    x = torch.ones(1000)
    assert torch.equal(model(x), x)  # p = 0 at step 0
    sched.step()
    sched.step()
    assert (model(x) == 0).any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"total_steps": 0}, "total_steps"),
        ({"shape": "exp"}, "shape"),
        ({"start": 1.5}, "start"),
        ({"end": -0.1}, "end"),
    ],
)
def test_bad_arguments(kwargs, match) -> None:
    args = {"total_steps": 3} | kwargs
    with pytest.raises(ValueError, match=match):
        D.DropoutScheduler(_model(), **args)


def test_alpha_layer_cannot_reach_one() -> None:
    with pytest.raises(ValueError, match="end"):
        D.DropoutScheduler(nn.Sequential(nn.AlphaDropout(0.1)), total_steps=3, end=1.0)


def test_model_without_dropout() -> None:
    with pytest.raises(ValueError, match="model"):
        D.DropoutScheduler(nn.Linear(2, 2), total_steps=3)
