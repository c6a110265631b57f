"""The adaptive clippers inside GuardedStep: spike skips, NaN steps, AGC with bound parameters."""

import math

import pytest
import torch
from torch import nn

from traintech.clip import AGC, EMAClip, GuardedStep, QuantileClip, ZClip


def _model_and_grads(seed):
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    grads = [torch.randn(p.shape, generator=gen) for p in model.parameters()]
    return model, grads


def _set(model, grads, scale=1.0):
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g * scale


@pytest.mark.parametrize(
    "make",
    [
        lambda: EMAClip(warmup_steps=3, skip_factor=3.0),
        lambda: QuantileClip(quantile=0.5, window=5, skip_factor=3.0),
        lambda: ZClip(warmup_steps=3, skip_factor=3.0),
    ],
)
def test_guarded_step_skips_huge_spikes_and_nan_without_touching_state(make):
    model, grads = _model_and_grads(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    clipper = make()
    guard = GuardedStep(opt, clipper=clipper)
    for scale in (1.0, 1.1, 0.9, 1.0, 1.05):
        _set(model, grads, scale)
        assert not guard.step().skipped
    before_state = clipper.state_dict()
    before_params = [p.detach().clone() for p in model.parameters()]
    _set(model, grads, math.nan)
    assert guard.step().skipped
    after_state = clipper.state_dict()
    assert all(torch.equal(v, after_state[k]) for k, v in before_state.items()
               if isinstance(v, torch.Tensor))
    _set(model, grads, 100.0)  # a spike far beyond 3x the boundary: clipped and skipped
    report = guard.step()
    assert report.skipped and report.coef.item() < 0.1
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before_params, strict=True))
    _set(model, grads, 1.5)  # a moderate excess: clipped, not skipped
    report = guard.step()
    assert not report.skipped
    assert guard.steps_skipped == 2


def test_agc_bound_parameters_work_inside_the_guarded_step():
    model, grads = _model_and_grads(1)
    expected_model, _ = _model_and_grads(1)
    lr = 0.5
    _set(expected_model, grads)
    AGC(0.05, exclude=["2.bias"])(expected_model)
    clipped = [p.grad.clone() for p in expected_model.parameters()]
    assert not all(torch.equal(c, g) for c, g in zip(clipped, grads, strict=True))

    agc = AGC(0.05, exclude=["2.bias"], parameters=model)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    guard = GuardedStep(opt, clipper=agc)
    start = [p.detach().clone() for p in model.parameters()]
    _set(model, grads)
    report = guard.step()
    assert not report.skipped and report.coef.item() == 1.0
    for p, s, c in zip(model.parameters(), start, clipped, strict=True):
        torch.testing.assert_close(p.detach(), s - lr * c, rtol=1e-6, atol=1e-7)
    assert agc.last_result is not None and agc.last_result.coef.item() < 1
    total = math.sqrt(sum(g.pow(2).sum().item() for g in grads))
    assert agc.last_result.norm.item() == pytest.approx(total, rel=1e-6)


def test_agc_without_bound_parameters_refuses_the_split_protocol():
    agc = AGC()
    with pytest.raises(TypeError, match="parameters=model"):
        agc.decide(torch.tensor(1.0))
    with pytest.raises(TypeError, match="apply"):
        agc.apply([torch.ones(2)], None)
