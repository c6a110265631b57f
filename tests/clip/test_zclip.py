"""ZClip against the zclip package 1.0.0 and against a float64 reference of the formulas."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from traintech.clip import ZClip

zclip = pytest.importorskip("zclip")

OPTIONS = [
    dict(mode=mode, clip_option=option, max_grad_norm=cap, skip_update_on_spike=skip)
    for mode, option, cap, skip in itertools.product(
        ["zscore", "percentile"], ["adaptive_scaling", "mean"], [None, 1.5], [False, True]
    )
] + [
    dict(clip_factor=0.7, max_grad_norm=3.0),
    dict(clip_factor=1.3, alpha=0.9, z_thresh=1.5),
    dict(mode="percentile", z_thresh=0.5, max_grad_norm=1.2, skip_update_on_spike=True),
]


def _norms(seed: int, steps: int = 120) -> list[float]:
    """float32 norms: a lognormal walk around 1 with spikes of 5x to 60x and a scale shift."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.exp(0.25 * torch.randn(steps, generator=gen))
    base[steps // 2 :] *= 1.7
    spikes = torch.rand(steps, generator=gen) < 0.08
    base[spikes] *= 5 + 55 * torch.rand(int(spikes.sum()), generator=gen)
    return [float(x) for x in base.float()]


def _package(opts: dict, warmup: int) -> "zclip.ZClip":
    kwargs = dict(opts, warmup_steps=warmup)
    return zclip.ZClip(**kwargs)


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("warmup", [1, 7])
def test_matches_package_bit_for_bit(opts, warmup):
    """One 1-element gradient: both libraries measure |x| exactly, so every bit must agree."""
    ref, ours = _package(opts, warmup), ZClip(warmup_steps=warmup, **opts)
    ref_model = nn.Linear(1, 1, bias=False)
    param = nn.Parameter(torch.zeros(1))
    clipped_after_warmup = 0
    for step, x in enumerate(_norms(seed=warmup)):
        ref_model.weight.grad = torch.tensor([[x]])
        param.grad = torch.tensor([x])
        ref_norm = ref.step(ref_model)
        result = ours([param])
        assert result.norm.item() == ref_norm
        assert param.grad.item() == ref_model.weight.grad.item(), f"step {step}"
        assert bool(ours.initialized) == ref.initialized
        if ref.initialized:
            assert (ours.mean.item(), ours.var.item()) == (ref.mean, ref.var), f"step {step}"
        clipped = ref_model.weight.grad.item() != x
        assert bool(result.coef != 1) == clipped
        clipped_after_warmup += clipped and ref.initialized and step >= warmup
    assert clipped_after_warmup >= 3


@pytest.mark.parametrize("opts", OPTIONS[:8], ids=str)
def test_matches_package_on_a_model(opts, seed):
    """Random gradients over several tensors: equal up to the norm's float32 summation order."""
    torch.manual_seed(0)
    ref_model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    our_model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    ref, ours = _package(opts, 10), ZClip(warmup_steps=10, **opts)
    for x in _norms(seed=3, steps=120):
        for a, b in zip(ref_model.parameters(), our_model.parameters(), strict=True):
            g = torch.randn(a.shape, generator=seed) * x / 3.0
            a.grad, b.grad = g.clone(), g.clone()
        ref.step(ref_model)
        ours(our_model.parameters())
        for a, b in zip(ref_model.parameters(), our_model.parameters(), strict=True):
            torch.testing.assert_close(b.grad, a.grad, rtol=2e-6, atol=1e-9)
        if ref.initialized:
            torch.testing.assert_close(ours.mean.item(), ref.mean, rtol=1e-6, atol=0)
            torch.testing.assert_close(ours.var.item(), ref.var, rtol=1e-5, atol=1e-12)


def _reference_zclip(norms, alpha, z, warmup, mode, option, factor, cap, eps=1e-6):
    """float64 reference written from the paper's equations (no package, no traintech)."""
    seen, mean, var, coefs = [], 0.0, 0.0, []
    for x in norms:
        if len(seen) < warmup:
            seen.append(x)
            coefs.append(1.0 if cap is None else min(1.0, cap / (x + 1e-6)))
            if len(seen) == warmup:
                mean = math.fsum(seen) / warmup
                var = math.fsum((s - mean) ** 2 for s in seen) / warmup
            continue
        std = math.sqrt(var)
        zscore = (x - mean) / (std + eps)
        if mode == "percentile":
            spike, bound = x > mean + z * std, mean + z * std
        elif option == "mean":
            spike, bound = zscore > z, mean
        else:
            spike, bound = zscore > z, factor * (mean + z * z * std / zscore)
        value = bound if spike else x
        limit = value if cap is None else min(value, cap)
        coefs.append(limit / (x + 1e-6) if x > limit else 1.0)
        mean = alpha * mean + (1 - alpha) * value
        var = alpha * var + (1 - alpha) * (value - mean) ** 2
    return coefs, mean, var


@pytest.mark.parametrize(
    "mode, option, factor, cap",
    [("zscore", "adaptive_scaling", 1.0, None), ("zscore", "mean", 1.0, 2.0),
     ("percentile", "mean", 1.0, None), ("zscore", "adaptive_scaling", 0.6, 4.0)],
)
def test_decide_matches_float64_reference(mode, option, factor, cap):
    norms = _norms(seed=11, steps=90)
    clipper = ZClip(alpha=0.95, z_thresh=2.0, warmup_steps=6, mode=mode, clip_option=option,
                    clip_factor=factor, max_grad_norm=cap)
    coefs = [clipper.decide(torch.tensor(x, dtype=torch.float64)).coef.item() for x in norms]
    ref_coefs, ref_mean, ref_var = _reference_zclip(
        norms, 0.95, 2.0, 6, mode, option, factor, cap
    )
    torch.testing.assert_close(coefs, ref_coefs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(clipper.mean.item(), ref_mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(clipper.var.item(), ref_var, rtol=1e-9, atol=1e-15)


def test_threshold_reports_bound_in_force():
    clipper = ZClip(warmup_steps=2, max_grad_norm=10.0)
    first = clipper.decide(torch.tensor(1.0))
    assert first.threshold.item() == 10.0 and first.coef.item() == 1.0
    clipper.decide(torch.tensor(1.0))
    spike = clipper.decide(torch.tensor(8.0))  # mean 1, std 0: clipped to the mean
    assert spike.threshold.item() == pytest.approx(1.0)
    assert spike.coef.item() == pytest.approx(1.0 / 8.0, rel=1e-6)


@pytest.mark.parametrize("mode", ["zscore", "percentile"])
def test_skip_factor_marks_only_large_spikes(mode):
    clipper = ZClip(warmup_steps=4, mode=mode, skip_factor=3.0)
    for x in (1.0, 1.2, 0.8, 1.0):
        assert not clipper.decide(torch.tensor(x)).skip
    # mean 1, std ~0.14: the spike boundary is ~1.35; 3x of it ~4.1.
    moderate = clipper.decide(torch.tensor(2.0))
    assert moderate.coef.item() < 1 and not moderate.skip
    huge = clipper.decide(torch.tensor(20.0))
    assert huge.coef.item() < 1 and huge.skip


@pytest.mark.parametrize("exponent", [2.0, 0.5])
def test_pow_rounds_like_python_float_pow(exponent, seed):
    """CPython's ``**`` calls C pow, which differs from x*x and sqrt about once in a thousand."""
    from traintech.clip._zclip import _python_pow

    values = torch.randn(20000, dtype=torch.float64, generator=seed).mul(3).abs()
    power = torch.tensor(exponent, dtype=torch.float64)
    assert _python_pow(values, power).tolist() == [v**exponent for v in values.tolist()]
    assert [_python_pow(v, power).item() for v in values[:500]] == [
        v**exponent for v in values[:500].tolist()
    ]


@settings(max_examples=40, deadline=None)
@given(
    norms=st.lists(st.floats(1e-3, 1e4), min_size=1, max_size=30),
    mode=st.sampled_from(["zscore", "percentile"]),
    option=st.sampled_from(["adaptive_scaling", "mean"]),
    cap=st.none() | st.floats(0.01, 100.0),
    warmup=st.integers(1, 4),
)
def test_result_never_exceeds_the_reported_bound(norms, mode, option, cap, warmup):
    clipper = ZClip(warmup_steps=warmup, mode=mode, clip_option=option, max_grad_norm=cap)
    for x in norms:
        result = clipper.decide(torch.tensor(x, dtype=torch.float64))
        coef = result.coef.item()
        assert 0.0 < coef <= 1.0
        assert x * coef <= result.threshold.item() * (1 + 1e-12) or coef == 1.0
        if coef == 1.0:
            assert x <= result.threshold.item() or not bool(clipper.initialized) and cap is None


def _run(clipper, norms):
    out = []
    for x in norms:
        r = clipper.decide(torch.tensor(x))
        out.append((r.norm.item(), r.coef.item(), r.coef.dtype, r.threshold.item(), bool(r.skip)))
    state = {k: v for k, v in clipper.state_dict().items() if isinstance(v, torch.Tensor)}
    return out, state
