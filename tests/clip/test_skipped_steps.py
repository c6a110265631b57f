"""GuardedStep is loud: skip warnings, the consecutive-skip limit, AMP mistakes, zero thresholds."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from traintech.clip import (
    GuardedStep,
    NormClip,
    SkippedStepWarning,
    TooManySkippedStepsError,
    ValueClip,
    ZClip,
    clip_grad_norm_,
    clip_grad_value_,
)


def _model_with_grad(value: float) -> nn.Linear:
    model = nn.Linear(2, 1)
    for p in model.parameters():
        p.grad = torch.full_like(p, value)
    return model


def _step(guard: GuardedStep, model: nn.Module, value: float):
    for p in model.parameters():
        p.grad = torch.full_like(p, value)
    return guard.step()


def test_skipped_step_warning_is_a_user_warning_exported_from_clip():
    assert issubclass(SkippedStepWarning, UserWarning)


@pytest.mark.parametrize(
    ("kwargs", "grad", "reason"),
    [
        ({}, float("nan"), "non-finite"),
        ({"max_norm_skip": 1.0}, 5.0, "max_norm_skip=1"),
    ],
)
def test_first_skip_warns_naming_the_reason(kwargs, grad, reason):
    model = _model_with_grad(0.0)
    guard = GuardedStep(torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)
    with pytest.warns(SkippedStepWarning, match=reason):
        report = _step(guard, model, grad)
    assert bool(report.skipped)


def test_spike_skip_names_the_clipper():
    model = _model_with_grad(0.0)
    guard = GuardedStep(
        torch.optim.SGD(model.parameters(), lr=0.1),
        ZClip(warmup_steps=3, max_grad_norm=None, skip_factor=2.0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for v in (1.0, 1.1, 0.9, 1.0, 1.05):
            _step(guard, model, v)
    with pytest.warns(SkippedStepWarning, match="spike"):
        report = _step(guard, model, 1000.0)
    assert bool(report.skipped)


def test_later_skips_are_counted_and_repeat_at_most_every_n_calls():
    model = _model_with_grad(0.0)
    guard = GuardedStep(
        torch.optim.SGD(model.parameters(), lr=0.1), max_consecutive_skips=None, warn_every=5
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(12):
            _step(guard, model, float("inf"))
    skips = [w for w in caught if issubclass(w.category, SkippedStepWarning)]
    # calls 0, 5 and 10 warn; the later ones count the skips since the previous warning
    assert len(skips) == 3
    assert "call 0" in str(skips[0].message)
    assert "5 more update(s) since call 0" in str(skips[1].message)
    assert "12 skipped in all" not in str(skips[1].message)
    assert "11 skipped in all" in str(skips[2].message)
    assert guard.steps_skipped == 12


def test_healthy_steps_do_not_warn():
    model = _model_with_grad(0.0)
    guard = GuardedStep(torch.optim.SGD(model.parameters(), lr=0.1), NormClip(1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for v in (0.1, 3.0, 0.2):
            _step(guard, model, v)


def test_warn_every_none_is_silent():
    model = _model_with_grad(0.0)
    guard = GuardedStep(torch.optim.SGD(model.parameters(), lr=0.1), warn_every=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _step(guard, model, float("nan"))
    assert guard.steps_skipped == 1


def test_max_consecutive_skips_defaults_to_a_finite_limit_at_most_100():
    model = _model_with_grad(0.0)
    guard = GuardedStep(torch.optim.SGD(model.parameters(), lr=0.1))
    assert guard.max_consecutive_skips is not None and 1 <= guard.max_consecutive_skips <= 100
    before = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedStepWarning)
        match = "non-finite.*max_consecutive_skips=None"
        with pytest.raises(TooManySkippedStepsError, match=match):
            for _ in range(101):
                _step(guard, model, float("nan"))
    assert guard.steps_skipped == guard.max_consecutive_skips
    for b, p in zip(before, model.parameters(), strict=True):
        torch.testing.assert_close(p, b)


def test_max_consecutive_skips_none_disables_the_limit():
    model = _model_with_grad(0.0)
    guard = GuardedStep(
        torch.optim.SGD(model.parameters(), lr=0.1), max_consecutive_skips=None, warn_every=None
    )
    for _ in range(120):
        _step(guard, model, float("nan"))
    assert guard.consecutive_skips == 120


@pytest.mark.parametrize(("value", "exc"), [(0, ValueError), (1.5, TypeError)])
def test_warn_every_is_checked(value, exc):
    model = _model_with_grad(0.0)
    with pytest.raises(exc, match="warn_every"):
        GuardedStep(torch.optim.SGD(model.parameters(), lr=0.1), warn_every=value)


def test_fp16_gradients_without_a_scaler_warn_once():
    model = nn.Linear(2, 1).half()
    guard = GuardedStep(torch.optim.SGD(model.parameters(), lr=0.1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            _step(guard, model, 0.5)
    fp16 = [w for w in caught if "GradScaler" in str(w.message)]
    assert len(fp16) == 1 and "float16" in str(fp16[0].message)


def test_fp32_gradients_do_not_warn_about_the_scaler():
    model = _model_with_grad(0.5)
    guard = GuardedStep(torch.optim.SGD(model.parameters(), lr=0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _step(guard, model, 0.5)


def test_an_optimizer_already_unscaled_is_refused_before_anything_changes():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(model(torch.ones(1, 2)).sum()).backward()
    scaler.unscale_(opt)  # the mistake: GuardedStep unscales itself
    guard = GuardedStep(opt, NormClip(1.0), scaler=scaler)
    before = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="unscale_.*already"):
        guard.step()
    for b, g, p in zip(before, grads, model.parameters(), strict=True):
        torch.testing.assert_close(p, b)
        torch.testing.assert_close(p.grad, g)
    assert guard.steps_taken == 0 and guard.steps_skipped == 0


def test_guarded_step_unscales_before_the_clipper_measures():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(model(torch.ones(1, 2)).sum()).backward()
    true = torch.linalg.vector_norm(
        torch.cat([p.grad.flatten() / 1024.0 for p in model.parameters()])
    )
    report = GuardedStep(opt, NormClip(100.0), scaler=scaler).step()
    torch.testing.assert_close(report.norm, true)


@pytest.mark.parametrize(
    ("make", "name"),
    [(lambda: NormClip(max_norm=0), "max_norm"), (lambda: ValueClip(clip_value=0), "clip_value")],
)
def test_clipper_classes_refuse_a_zero_threshold(make, name):
    with pytest.raises(ValueError, match=rf"{name}=0.*every gradient to 0"):
        make()


def test_torch_drop_in_functions_keep_torchs_zero_behaviour():
    a = _model_with_grad(2.0)
    b = _model_with_grad(2.0)
    clip_grad_norm_(a.parameters(), 0.0)
    torch.nn.utils.clip_grad_norm_(b.parameters(), 0.0)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad)
    clip_grad_value_(a.parameters(), 0.0)
    assert all(bool((p.grad == 0).all()) for p in a.parameters())


def test_zclip_defaults_are_the_zclip_packages():
    zclip = pytest.importorskip("zclip")
    import inspect

    ref = inspect.signature(zclip.ZClip.__init__).parameters
    ours = inspect.signature(ZClip.__init__).parameters
    for name in ("alpha", "z_thresh", "max_grad_norm", "eps", "warmup_steps", "mode",
                 "clip_option", "clip_factor", "skip_update_on_spike"):
        assert ours[name].default == ref[name].default, name
    assert ZClip().max_grad_norm == 1.0
