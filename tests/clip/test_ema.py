"""EMAClip against a float64 reference of its formula, and its warm-up and spike behaviour."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from traintech.clip import EMAClip


def _reference(norms, factor, beta, warmup):
    """Thresholds and coefficients from the docstring's equations, in Python floats."""
    m, n, out = 0.0, 0, []
    for x in norms:
        tau = math.inf if n < warmup else factor * m / (1 - beta**n)
        out.append((tau, min(1.0, tau / (x + 1e-6))))
        m = beta * m + (1 - beta) * min(x, tau)
        n += 1
    return out


def _sequence(steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    norms = torch.exp(0.4 * torch.randn(steps, generator=gen))
    norms[steps // 3] *= 30
    norms[steps // 2 :] *= 4
    return norms.double().tolist()


@pytest.mark.parametrize("factor, beta, warmup", [(2.0, 0.98, 25), (1.2, 0.9, 1), (3.0, 0.0, 4)])
def test_matches_float64_reference(factor, beta, warmup):
    norms = _sequence(200)
    clipper = EMAClip(factor=factor, beta=beta, warmup_steps=warmup)
    got = [clipper.decide(torch.tensor(x, dtype=torch.float64)) for x in norms]
    ref = _reference(norms, factor, beta, warmup)
    torch.testing.assert_close(
        [(r.threshold.item(), r.coef.item()) for r in got], ref, rtol=1e-12, atol=0
    )
    assert sum(c < 1 for _, c in ref) >= 3  # the sequence does get clipped


def test_warmup_never_clips_and_reports_inf():
    clipper = EMAClip(warmup_steps=5)
    for x in (1.0, 100.0, 1e4, 0.1, 3.0):
        result = clipper.decide(torch.tensor(x))
        assert result.coef.item() == 1.0 and result.threshold.item() == math.inf
    assert not clipper.decide(torch.tensor(1.0)).threshold.isinf()


def test_one_spike_barely_moves_the_threshold():
    factor, beta = 2.0, 0.98
    clipper = EMAClip(factor=factor, beta=beta, warmup_steps=10)
    for _ in range(200):
        before = clipper.decide(torch.tensor(1.0)).threshold.item()
    spike = clipper.decide(torch.tensor(1000.0))
    after = clipper.decide(torch.tensor(1.0)).threshold.item()
    assert spike.coef.item() == pytest.approx(before / 1000.0, rel=1e-6)
    weight = (1 - beta) / (1 - beta**201)  # the newest norm's weight in the corrected mean
    assert after / before <= 1 + weight * (factor - 1) + 1e-9
    assert after / before > 1.0


def test_a_lasting_scale_change_is_followed():
    clipper = EMAClip(factor=2.0, beta=0.98, warmup_steps=5)
    for _ in range(50):
        clipper.decide(torch.tensor(1.0))
    coefs = [clipper.decide(torch.tensor(10.0)).coef.item() for _ in range(300)]
    assert coefs[0] < 0.25 and coefs[-1] == 1.0


def test_average_is_the_weighted_mean_of_the_norms():
    beta, norms = 0.9, [2.0, 5.0, 1.0]
    clipper = EMAClip(beta=beta, warmup_steps=10)
    for x in norms:
        clipper.decide(torch.tensor(x))
    weights = [beta**2, beta, 1.0]
    expected = sum(w * x for w, x in zip(weights, norms, strict=True)) / sum(weights)
    assert clipper.average.item() == pytest.approx(expected, rel=1e-12)


def test_skip_factor_marks_spikes_beyond_k_thresholds():
    clipper = EMAClip(factor=2.0, warmup_steps=3, skip_factor=3.0)
    for _ in range(3):
        clipper.decide(torch.tensor(1.0))
    clipped = clipper.decide(torch.tensor(5.0))  # threshold 2: clipped, below 3 * 2
    skipped = clipper.decide(torch.tensor(50.0))
    assert clipped.coef.item() < 1 and not clipped.skip
    assert skipped.coef.item() < 1 and skipped.skip


@settings(max_examples=40, deadline=None)
@given(
    norms=st.lists(st.floats(1e-3, 1e3), min_size=2, max_size=40),
    factor=st.floats(0.5, 4.0),
    beta=st.floats(0.0, 0.99),
    warmup=st.integers(1, 5),
)
def test_threshold_uses_only_the_past_and_bounds_the_result(norms, factor, beta, warmup):
    a = EMAClip(factor=factor, beta=beta, warmup_steps=warmup)
    b = EMAClip(factor=factor, beta=beta, warmup_steps=warmup)
    for x in norms[:-1]:
        a.decide(torch.tensor(x, dtype=torch.float64))
        b.decide(torch.tensor(x, dtype=torch.float64))
    last_a = a.decide(torch.tensor(norms[-1], dtype=torch.float64))
    last_b = b.decide(torch.tensor(norms[-1] * 7.0, dtype=torch.float64))
    assert torch.equal(last_a.threshold, last_b.threshold)
    for result in (last_a, last_b):
        assert 0.0 < result.coef.item() <= 1.0
        post = result.norm.item() * result.coef.item()
        assert post <= result.threshold.item() * (1 + 1e-12)
