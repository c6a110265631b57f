"""Unwrapping, GuardedOptimizer, GradientGuard and the Monitor's sink, without a framework."""

import copy
import math

import pytest
import torch

from traintech.clip import GuardedOptimizer, GuardedStep, NormClip, ZClip
from traintech.clip._unwrap import unwrap_optimizer
from traintech.integrations import GradientGuard, PendingLogs, lightning_sink
from traintech.monitor import Monitor
from traintech.monitor._sink import record_metrics


class _Wrapper:
    def __init__(self, optimizer):
        self._optimizer = optimizer


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))


def _grads(model, x, nan=False):
    loss = model(x).pow(2).mean()
    loss.backward()
    if nan:
        model[0].weight.grad[0, 0] = math.nan
    return loss


def test_unwrap_reaches_the_real_optimizer_through_chains():
    opt = torch.optim.SGD(_model().parameters(), lr=0.1)
    assert unwrap_optimizer(opt) is opt
    assert unwrap_optimizer(_Wrapper(_Wrapper(opt))) is opt
    guarded = GuardedOptimizer(opt, NormClip(1.0))
    assert unwrap_optimizer(guarded) is opt
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer or a wrapper"):
        unwrap_optimizer(object())
    with pytest.raises(TypeError, match="got list"):
        GuardedStep([opt])


def test_lightning_optimizer_wrapper_folds_into_the_fused_step():
    pytest.importorskip("lightning")
    from lightning.pytorch.core.optimizer import LightningOptimizer

    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    guard = GuardedStep(LightningOptimizer(opt), NormClip(0.1))
    assert guard.optimizer is opt and guard.fold
    ref_model = copy.deepcopy(model)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-2, fused=True)
    for step in range(3):
        x = torch.randn(3, 4, generator=torch.Generator().manual_seed(step))
        _grads(model, x)
        report = guard.step()
        _grads(ref_model, x)
        torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 0.1)
        ref.step()
        model.zero_grad()
        ref_model.zero_grad()
    assert report.fused
    for a, b in zip(model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_guarded_optimizer_skips_and_shares_param_groups_with_schedulers():
    model = _model()
    inner = torch.optim.SGD(model.parameters(), lr=0.5)
    opt = GuardedOptimizer(inner, NormClip(1.0))
    assert opt.param_groups is inner.param_groups and opt.state is inner.state
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    _grads(model, torch.ones(2, 4), nan=True)
    opt.step()
    sched.step()
    assert opt.step_was_skipped and opt.steps_skipped == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert inner.param_groups[0]["lr"] == 0.25
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_guarded_optimizer_closure_returns_the_loss():
    model = _model()
    opt = GuardedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), None)
    loss = opt.step(lambda: _grads(model, torch.ones(2, 4)))
    assert isinstance(loss, torch.Tensor) and opt.steps_taken == 1


def test_guarded_optimizer_state_dict_resumes_bit_for_bit():
    xs = [torch.randn(3, 4, generator=torch.Generator().manual_seed(i)) for i in range(12)]

    def make():
        model = _model()
        return model, GuardedOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-2),
                                       ZClip(warmup_steps=3))

    def train(model, opt, batch):
        for x in batch:
            _grads(model, x)
            opt.step()
            opt.zero_grad()

    straight, s_opt = make()
    train(straight, s_opt, xs)
    half, h_opt = make()
    train(half, h_opt, xs[:6])
    state = copy.deepcopy((half.state_dict(), h_opt.state_dict()))
    assert state[1]["traintech_guard"]["calls"] == 6
    resumed, r_opt = make()
    resumed.load_state_dict(state[0])
    r_opt.load_state_dict(state[1])
    train(resumed, r_opt, xs[6:])
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(s_opt.clipper.mean, r_opt.clipper.mean)
    assert torch.equal(s_opt.clipper.var, r_opt.clipper.var)
    with pytest.raises(ValueError, match="no 'traintech_guard' entry"):
        r_opt.load_state_dict(torch.optim.SGD(resumed.parameters(), lr=0.1).state_dict())


def test_gradient_guard_drops_gradients_and_counts():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    guard = GradientGuard(ZClip(warmup_steps=2))
    for step in range(4):
        _grads(model, torch.ones(2, 4) * (step + 1), nan=step == 2)
        before = [p.detach().clone() for p in model.parameters()]
        report = guard.before_step(opt)
        opt.step()
        opt.zero_grad()
        if step == 2:
            assert bool(report.skipped)
            assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
            assert guard.clip_result().skip.item() and math.isinf(guard.clip_result().threshold)
    assert (guard.steps_applied, guard.steps_skipped) == (3, 1)
    state = guard.state_dict()
    fresh = GradientGuard(ZClip(warmup_steps=2))
    fresh.load_state_dict(state)
    assert (fresh.steps_applied, fresh.steps_skipped) == (3, 1)
    assert fresh.state_dict()["guard"] == state["guard"]
    other = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="built for another optimizer; got a second one \\(SGD\\)"):
        guard.before_step(other)
    with pytest.raises(TypeError, match="skip must be a bool"):
        GradientGuard(None, skip="yes")
    with pytest.raises(TypeError, match="clipper must be a traintech.clip.Clipper"):
        GradientGuard(1.0)


def test_monitor_sink_receives_flat_metrics():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    monitor = Monitor(model, _Wrapper(opt), sink=lambda m, step: seen.append((step, m)))
    assert monitor.optimizer is opt
    guard = GuardedStep(opt, NormClip(0.01))
    loss = _grads(model, torch.ones(2, 4))
    report = guard.step()
    monitor.step(loss=loss, clip=report.clip)
    step, metrics = seen[0]
    assert step == 0
    assert metrics["monitor/loss"] == pytest.approx(loss.item())
    assert metrics["monitor/clip/coef"] == pytest.approx(report.coef.item())
    assert metrics["monitor/clip/skip"] == 0.0
    with pytest.raises(TypeError, match="sink must be a callable"):
        Monitor(model, opt, sink="tensorboard")


def test_ready_sinks():
    logged = []

    class _Module:
        def log_dict(self, metrics):
            logged.append(metrics)

    lightning_sink(_Module())({"monitor/loss": 1.0}, 0)
    assert logged == [{"monitor/loss": 1.0}]
    pending = PendingLogs()
    pending(record_metrics({"loss": 2.0, "grad_norm": math.inf, "events": [{}]}), 1)
    logs: dict = {}
    pending.merge_into(logs)
    assert logs == {"monitor/loss": 2.0, "monitor/events": 1.0}
    pending.merge_into(logs := {})
    assert logs == {}


def test_importing_traintech_does_not_import_the_frameworks():
    import subprocess
    import sys

    code = ("import sys, traintech, traintech.integrations; "
            "print(any(m in sys.modules for m in ('lightning', 'transformers', 'accelerate')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- the state_dict helpers every adapter shares ------------------------------------------------


def test_check_version_names_found_and_expected():
    from traintech.integrations._core import check_version

    check_version({"_version": 1}, 1, "Owner")
    with pytest.raises(ValueError, match=r"_version 0; Owner expects 1"):
        check_version({"_version": 0}, 1, "Owner")
    with pytest.raises(ValueError, match=r"_version None; Owner expects 1"):
        check_version({}, 1, "Owner")


def test_restore_or_hold_loads_a_built_guard_and_holds_otherwise():
    from traintech.integrations._core import restore_or_hold

    model = _model()
    guard = GuardedStep(torch.optim.SGD(model.parameters(), lr=0.1), NormClip(1.0))
    _grads(model, torch.randn(3, 4))
    guard.step()
    saved = copy.deepcopy(guard.state_dict())
    held = {"held": True}
    assert restore_or_hold(None, saved, held) is saved  # not built yet: hold the new state
    assert restore_or_hold(None, None, held) is held  # nothing saved: keep what was held
    fresh = GuardedStep(torch.optim.SGD(model.parameters(), lr=0.1), NormClip(1.0))
    assert restore_or_hold(fresh, saved, held) is held  # built: loaded, pending unchanged
    assert fresh.steps_taken == guard.steps_taken == 1
