"""Integrations on CUDA: accelerate's real fp16 scaler, the fused fold through wrappers, compile."""

import math

import pytest
import torch

from traintech.clip import GuardedOptimizer, GuardedStep, NormClip, ZClip


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(),
                               torch.nn.Linear(32, 4)).cuda()


def test_accelerate_fp16_guarded_step_skips_nan_and_holds_the_scheduler():
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    try:
        accelerator = accelerate.Accelerator(mixed_precision="fp16")
        model = _model()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
        model, opt, sched = accelerator.prepare(model, opt, sched)
        guard = GuardedStep(opt, ZClip(warmup_steps=2))
        assert guard.scaler is accelerator.scaler is not None
        skipped = []
        for i in range(6):
            x = torch.randn(8, 16, device="cuda")
            with accelerator.autocast():
                loss = model(x).float().pow(2).mean()
            accelerator.backward(loss)
            if i == 3:
                next(model.parameters()).grad[0, 0] = math.nan
            guard.step()
            skipped.append(accelerator.optimizer_step_was_skipped)
            sched.step()
            opt.zero_grad()
        assert skipped[3] and guard.steps_skipped >= 1
        assert all(torch.isfinite(p).all() for p in model.parameters())
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def test_fused_fold_engages_through_a_guarded_optimizer_with_a_scaler():
    model = _model()
    scaler = torch.amp.GradScaler("cuda")
    inner = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    opt = GuardedOptimizer(inner, NormClip(0.1), scaler=scaler)
    for _ in range(4):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(torch.randn(8, 16, device="cuda")).float().pow(2).mean()
        scaler.scale(loss).backward()
        opt.step()
        opt.zero_grad()
    assert opt.last_report.fused and opt.steps_taken == 4


def test_compiled_guarded_step_on_cuda_does_not_recompile():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    guard = GuardedStep(opt, ZClip(warmup_steps=2))
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    step = torch.compile(guard.step, backend=backend)
    for i in range(10):
        model(torch.randn(8, 16, device="cuda")).pow(2).mean().backward()
        if i == 1:
            next(model.parameters()).grad[0, 0] = math.nan
        if i == 4:
            after_warmup = len(graphs)
        step()
        opt.zero_grad()
    assert len(graphs) == after_warmup
    assert guard.steps_skipped == 1
