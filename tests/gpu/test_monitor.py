"""CUDA: AMP mistakes caught, loud skips on a fused optimizer, the sampler's memory bound."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from traintech.clip import GuardedStep, NormClip, SkippedStepWarning
from traintech.monitor import Monitor


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1)).cuda()


def _loss(model: nn.Module, scale: float = 1.0) -> torch.Tensor:
    x = torch.randn(32, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        return (model(x).float() * scale).pow(2).mean()


def test_monitor_catches_a_clipper_run_on_scaled_fp16_gradients():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**12)
    mon = Monitor(model, opt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            opt.zero_grad()
            scaler.scale(_loss(model)).backward()
            result = NormClip(1.0)(model.parameters())  # the mistake: before unscale_
            scaler.step(opt)
            scaler.update()
            mon.step(clip=result)
    msgs = [str(w.message) for w in caught if "unscale_" in str(w.message)]
    assert len(msgs) == 1 and "4.1e+03x" in msgs[0]


def test_guarded_step_refuses_an_already_unscaled_cuda_optimizer():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cuda")
    guard = GuardedStep(opt, NormClip(1.0), scaler=scaler)
    scaler.scale(_loss(model)).backward()
    scaler.unscale_(opt)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="unscale_.*already"):
        guard.step()
    for b, p in zip(before, model.parameters(), strict=True):
        torch.testing.assert_close(p, b)


def test_fused_guarded_step_warns_on_a_non_finite_step():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    guard = GuardedStep(opt, NormClip(1.0))
    for _ in range(2):  # the first fused step takes the plain path (no state yet)
        opt.zero_grad()
        _loss(model).backward()
        guard.step()
    opt.zero_grad()
    _loss(model, scale=float("inf")).backward()
    with pytest.warns(SkippedStepWarning, match="non-finite"):
        report = guard.step()
    assert bool(report.skipped) and report.fused


def test_update_sampler_memory_stays_within_its_budget():
    model = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(8)]).cuda()  # 8.4M elements
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    budget = 1 << 20
    mon = Monitor(model, opt, update_every=1, update_max_numel=budget)
    x = torch.randn(4, 1024, device="cuda")
    model(x).sum().backward()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    opt.step()
    mon.step()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra <= 4 * budget * 1.25 + (1 << 20), extra  # the float32 copy, plus small norms
