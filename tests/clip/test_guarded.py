"""GuardedStep: skipping leaves everything untouched, fused folding, AMP, resume, bad input."""

import copy
import io
import math

import pytest
import torch
from torch import Tensor, nn

from traintech.clip import (
    Clipper,
    ClipResult,
    GuardedStep,
    NormClip,
    TooManySkippedStepsError,
    ValueClip,
)

from _helpers import assert_close_to_f64

X = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
Y = torch.randn(16, 1, generator=torch.Generator().manual_seed(2))

OPTIMIZERS = {
    "adamw": lambda ps, fused: torch.optim.AdamW(ps, lr=0.05, fused=fused),
    "adam": lambda ps, fused: torch.optim.Adam(ps, lr=0.05, fused=fused),
    "sgd": lambda ps, fused: torch.optim.SGD(ps, lr=0.05, momentum=0.9, fused=fused),
    "sgd_plain": lambda ps, fused: torch.optim.SGD(ps, lr=0.05, fused=fused),
}


class EMAProbe(Clipper):
    """A stateful clipper for the tests: threshold = 2 x EMA of past norms."""

    def __init__(self) -> None:
        self.ema = torch.tensor(0.0)
        self.calls = 0

    def decide(self, norm: Tensor) -> ClipResult:
        self.calls += 1
        self.ema = self.ema * 0.5 + norm.detach().float() * 0.5
        threshold = 2 * self.ema
        coef = torch.clamp(threshold / (norm + 1e-6), max=1.0)
        return ClipResult(norm, coef, threshold, torch.tensor(False))

    def state_dict(self):
        return {"_version": self._version, "ema": self.ema.clone(), "calls": self.calls}

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self.ema, self.calls = state_dict["ema"].clone(), state_dict["calls"]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _backward(model, scale=1.0):
    model.zero_grad()
    (((model(X) - Y) ** 2).mean() * scale).backward()


def _snapshot(model, opt, clipper):
    return copy.deepcopy(
        (model.state_dict(), opt.state_dict(), clipper.state_dict() if clipper else None)
    )


def _assert_identical(a, b):
    buf_a, buf_b = io.BytesIO(), io.BytesIO()
    torch.save(a, buf_a)
    torch.save(b, buf_b)
    assert buf_a.getvalue() == buf_b.getvalue()


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("clipper_cls", [NormClip, EMAProbe])
def test_non_finite_step_is_skipped_and_leaves_everything_untouched(
    opt_name, fused, bad, clipper_cls
):
    model = _model()
    opt = OPTIMIZERS[opt_name](model.parameters(), fused)
    clipper = NormClip(0.5) if clipper_cls is NormClip else EMAProbe()
    guard = GuardedStep(opt, clipper)
    for _ in range(2):
        _backward(model)
        assert not bool(guard.step().skipped)
    before = _snapshot(model, opt, clipper)
    _backward(model)
    model[0].weight.grad[1, 2] = bad
    report = guard.step()
    assert bool(report.skipped)
    assert report.fused == fused
    assert report.clip is None or not clipper.stateful
    _assert_identical(before, _snapshot(model, opt, clipper))
    assert (guard.steps_taken, guard.steps_skipped, guard.consecutive_skips) == (2, 1, 1)
    assert guard.last_finite_step == 1
    _backward(model)
    assert not bool(guard.step().skipped)
    assert (guard.steps_taken, guard.consecutive_skips, guard.last_finite_step) == (3, 0, 3)


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("max_norm", [0.05, 100.0])
def test_fused_folding_equals_clip_then_step(opt_name, max_norm):
    m_fused, m_ref = _model(), _model()
    o_fused = OPTIMIZERS[opt_name](m_fused.parameters(), True)
    o_ref = OPTIMIZERS[opt_name](m_ref.parameters(), False)
    guard = GuardedStep(o_fused, NormClip(max_norm))
    assert guard.fold
    for step in range(5):
        _backward(m_fused)
        _backward(m_ref)
        ref_norm = torch.nn.utils.clip_grad_norm_(m_ref.parameters(), max_norm)
        o_ref.step()
        report = guard.step()
        # the first step initialises state on the plain path (plain SGD has none)
        assert report.fused == (step > 0 or opt_name == "sgd_plain")
        torch.testing.assert_close(report.norm, ref_norm, rtol=1e-5, atol=0)
    for a, b in zip(m_fused.parameters(), m_ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_step_leaves_clipped_gradients_like_clip_grad_norm():
    # torch's fused kernel divides each gradient by grad_scale in its own pass over the tensors,
    # so afterwards .grad holds what clip_grad_norm_ would have left there.
    model = _model()
    guard = GuardedStep(torch.optim.AdamW(model.parameters(), fused=True), NormClip(1e-3))
    _backward(model)
    guard.step()
    _backward(model)
    grads = [p.grad.double().clone() for p in model.parameters()]
    report = guard.step()
    assert report.fused
    for p, g in zip(model.parameters(), grads, strict=True):
        assert_close_to_f64(p.grad, g * float(report.coef), dtype=torch.float32)


def test_sgd_update_has_effective_learning_rate():
    model = _model()
    lr, tau = 0.1, 0.2
    guard = GuardedStep(torch.optim.SGD(model.parameters(), lr=lr), NormClip(tau))
    _backward(model)
    p0 = [p.detach().double().clone() for p in model.parameters()]
    g = [p.grad.double().clone() for p in model.parameters()]
    norm = math.sqrt(sum(float((x**2).sum()) for x in g))
    guard.step()
    for p, w, gr in zip(model.parameters(), p0, g, strict=True):
        assert_close_to_f64(p, w - lr * min(1.0, tau / (norm + 1e-6)) * gr, dtype=torch.float32)


@pytest.mark.parametrize("fused", [False, True])
def test_hard_limit_and_clipper_skip(fused):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), fused=fused)
    guard = GuardedStep(opt, NormClip(1.0), max_norm_skip=1e-4)
    _backward(model)
    before = _snapshot(model, opt, None)
    report = guard.step()
    assert bool(report.skipped) and math.isfinite(float(report.norm))
    _assert_identical(before, _snapshot(model, opt, None))
    assert guard.last_finite_step == 0


def test_raises_after_consecutive_skips():
    model = _model()
    guard = GuardedStep(torch.optim.SGD(model.parameters(), lr=0.1), max_consecutive_skips=2)
    for _ in range(2):
        _backward(model, scale=float("nan"))
        if guard.consecutive_skips == 1:
            with pytest.raises(TooManySkippedStepsError, match="max_consecutive_skips=2"):
                guard.step()
        else:
            guard.step()


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("clipper", [NormClip(0.05), ValueClip(0.01), None])
def test_amp_gradscaler_unscales_before_clipping(fused, clipper):
    def run(use_fused, inject):
        model = _model()
        opt = torch.optim.AdamW(model.parameters(), lr=0.05, fused=use_fused)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
        guard = GuardedStep(opt, copy.deepcopy(clipper), scaler=scaler)
        reports = []
        for step in range(5):
            model.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = ((model(X).float() - Y) ** 2).mean()
            scaler.scale(loss).backward()
            true_norm = torch.cat([p.grad.flatten() for p in model.parameters()]).double().norm()
            true_norm = true_norm / scaler.get_scale()
            if step == inject:
                model[2].bias.grad.fill_(float("inf"))
            reports.append((guard.step(), true_norm, scaler.get_scale()))
        return model, reports

    m_a, rep_a = run(fused, inject=2)
    m_b, rep_b = run(False, inject=2)
    scales = [s for _, _, s in rep_a]
    assert scales == [2.0**12, 2.0**12, 2.0**11, 2.0**11, 2.0**11]  # backed off once
    for step, ((ra, norm, _), (rb, _, _)) in enumerate(zip(rep_a, rep_b, strict=True)):
        assert bool(ra.skipped) == (step == 2)
        if step != 2:
            assert_close_to_f64(ra.norm, norm, dtype=torch.float32)
        torch.testing.assert_close(ra.norm, rb.norm, rtol=1e-5, atol=0)
    for a, b in zip(m_a.parameters(), m_b.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused", [False, True])
def test_state_dict_resume_is_bit_for_bit(fused):
    def make():
        model = _model()
        opt = torch.optim.AdamW(model.parameters(), lr=0.05, fused=fused)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        return model, opt, scaler, GuardedStep(opt, EMAProbe(), scaler=scaler)

    def train(model, scaler, guard, steps, nan_at=()):
        for step in range(steps):
            model.zero_grad()
            scaler.scale(((model(X) - Y) ** 2).mean()).backward()
            if step in nan_at:
                model[0].bias.grad[0] = float("nan")
            guard.step()

    model, opt, scaler, guard = make()
    train(model, scaler, guard, 3, nan_at=(1,))
    saved = copy.deepcopy(
        {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "scaler": scaler.state_dict(),
            "guard": guard.state_dict(),
        }
    )
    model2, opt2, scaler2, guard2 = make()
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    scaler2.load_state_dict(saved["scaler"])
    guard2.load_state_dict(saved["guard"])
    train(model, scaler, guard, 3, nan_at=(0,))
    train(model2, scaler2, guard2, 3, nan_at=(0,))
    _assert_identical(_snapshot(model, opt, guard.clipper), _snapshot(model2, opt2, guard2.clipper))
    assert guard.state_dict() == guard2.state_dict()
    assert (guard2.steps_taken, guard2.steps_skipped) == (4, 2)


def test_gradient_accumulation_clips_once_per_step():
    m_acc, m_ref = _model(), _model()
    guard = GuardedStep(torch.optim.SGD(m_acc.parameters(), lr=0.1), NormClip(0.1))
    o_ref = torch.optim.SGD(m_ref.parameters(), lr=0.1)
    m_acc.zero_grad()
    m_ref.zero_grad()
    for half in (slice(0, 8), slice(8, 16)):
        ((m_acc(X[half]) - Y[half]) ** 2).mean().backward()
    ((m_ref(X) - Y) ** 2).mean().mul(2).backward()
    report = guard.step()
    ref = torch.nn.utils.clip_grad_norm_(m_ref.parameters(), 0.1)
    o_ref.step()
    torch.testing.assert_close(report.norm, ref, rtol=1e-5, atol=0)
    for a, b in zip(m_acc.parameters(), m_ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert guard.steps_taken == 1


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"optimizer": "sgd"}, TypeError, "optimizer"),
        ({"clipper": 1.0}, TypeError, "clipper"),
        ({"scaler": object()}, TypeError, "scaler"),
        ({"max_norm_skip": -1.0}, ValueError, "max_norm_skip"),
        ({"max_norm_skip": float("nan")}, ValueError, "max_norm_skip"),
        ({"max_consecutive_skips": 0}, ValueError, "max_consecutive_skips"),
        ({"max_consecutive_skips": 2.5}, TypeError, "max_consecutive_skips"),
        ({"fold": True}, ValueError, "fold"),
        ({"fold": True, "clipper": ValueClip(1.0), "fused": True}, ValueError, "fold"),
    ],
)
def test_bad_input(kwargs, exc, match):
    model = _model()
    fused = kwargs.pop("fused", False)
    kwargs.setdefault("optimizer", torch.optim.AdamW(model.parameters(), fused=fused))
    with pytest.raises(exc, match=match):
        GuardedStep(**kwargs)


def test_step_without_gradients_and_bad_state_dict():
    model = _model()
    guard = GuardedStep(torch.optim.SGD(model.parameters(), lr=0.1), NormClip(1.0))
    with pytest.raises(ValueError, match="no gradients"):
        guard.step()
    sd = guard.state_dict()
    with pytest.raises(ValueError, match="_version"):
        guard.load_state_dict({**sd, "_version": 0})
    with pytest.raises(ValueError, match="clipper"):
        GuardedStep(torch.optim.SGD(model.parameters(), lr=0.1)).load_state_dict(sd)


class RecordingNormClip(NormClip):
    """NormClip that records every norm decide() is given."""

    def __init__(self, max_norm: float) -> None:
        super().__init__(max_norm)
        self.seen: list[float] = []

    def decide(self, norm: Tensor) -> ClipResult:
        self.seen.append(float(norm))
        return super().decide(norm)


@pytest.mark.parametrize("fused", [False, True])
def test_decide_never_sees_a_non_finite_norm(fused):
    model = _model()
    clipper = RecordingNormClip(0.5)
    guard = GuardedStep(torch.optim.AdamW(model.parameters(), fused=fused), clipper)
    for step in range(4):
        _backward(model, scale=float("inf") if step == 2 else 1.0)
        report = guard.step()
        assert bool(report.skipped) == (step == 2)
    assert all(math.isfinite(v) for v in clipper.seen)
    assert guard.steps_skipped == 1


def test_agc_without_bound_parameters_works_in_the_guarded_step():
    from traintech.clip import AGC

    def run(use_guard):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        agc = AGC(clip_factor=0.01)
        guard = GuardedStep(opt, agc) if use_guard else None
        x, y = torch.randn(16, 6), torch.randn(16, 2)
        coefs = []
        for _ in range(3):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            if use_guard:
                coefs.append(float(guard.step().coef))
            else:
                coefs.append(float(agc(model.parameters()).coef))
                opt.step()
        return model, coefs

    guarded, guarded_coefs = run(True)
    plain, plain_coefs = run(False)
    assert guarded_coefs == plain_coefs and min(plain_coefs) < 1.0
    for a, b in zip(guarded.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
