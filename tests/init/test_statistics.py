"""Each init's distribution: variance from its formula (5 standard errors), KS shape tests."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import traintech.init as ti

OUT, IN = 384, 256
N = OUT * IN


def _var_tol(var, n=N):
    # SE of a sample variance is var * sqrt((kurtosis - 1) / n); kurtosis <= 3 for all of these.
    return 5 * var * math.sqrt(2.0 / n)


def _sample_var_f64(t):
    return t.double().var(unbiased=True).item()


@pytest.mark.parametrize(
    ("init", "expected_var"),
    [
        (lambda t, g: ti.xavier_uniform_(t, generator=g), 2.0 / (IN + OUT)),
        (lambda t, g: ti.xavier_normal_(t, gain=2.0, generator=g), 4 * 2.0 / (IN + OUT)),
        (lambda t, g: ti.kaiming_uniform_(t, nonlinearity="relu", generator=g), 2.0 / IN),
        (lambda t, g: ti.kaiming_normal_(t, a=0.3, generator=g), 2.0 / ((1 + 0.09) * IN)),
        (
            lambda t, g: ti.kaiming_normal_(t, mode="fan_out", nonlinearity="relu", generator=g),
            2.0 / OUT,
        ),
        (lambda t, g: ti.lecun_uniform_(t, generator=g), 1.0 / IN),
        (lambda t, g: ti.lecun_normal_(t, generator=g), 1.0 / IN),
        (lambda t, g: ti.variance_scaling_(t, 3.0, "fan_avg", generator=g), 3.0 / ((IN + OUT) / 2)),
        (lambda t, g: ti.variance_scaling_(t, 0.5, "fan_out", "uniform", generator=g), 0.5 / OUT),
        (
            lambda t, g: ti.variance_scaling_(t, 2.0, "fan_in", "untruncated_normal", generator=g),
            2.0 / IN,
        ),
    ],
)
def test_variance_matches_formula(init, expected_var, seed):
    w = init(torch.empty(OUT, IN), seed)
    assert abs(_sample_var_f64(w) - expected_var) < _var_tol(expected_var)
    assert abs(w.double().mean().item()) < 5 * math.sqrt(expected_var / N)


def _ks(sample, cdf):
    return stats.kstest(sample.double().flatten().numpy()[:20000], cdf).pvalue


def test_uniform_inits_pass_ks_and_bounds(seed):
    w = ti.xavier_uniform_(torch.empty(OUT, IN), generator=seed)
    bound = math.sqrt(6.0 / (IN + OUT))
    assert _ks(w, stats.uniform(loc=-bound, scale=2 * bound).cdf) > 1e-3
    assert w.abs().max().item() <= bound
    # the KS test does reject a wrong shape: the same sample against a normal of equal variance
    assert _ks(w, stats.norm(scale=bound / math.sqrt(3)).cdf) < 1e-6


def test_normal_inits_pass_ks(seed):
    w = ti.kaiming_normal_(torch.empty(OUT, IN), nonlinearity="relu", generator=seed)
    assert _ks(w, stats.norm(scale=math.sqrt(2.0 / IN)).cdf) > 1e-3


@pytest.mark.parametrize(
    ("mean", "std", "a", "b"),
    [
        (0.0, 1.0, -2.0, 2.0),
        (0.5, 2.0, -1.0, 3.0),
        (0.0, 1.0, 1.5, 4.0),
        (0.0, 1.0, -9.0, -6.0),
        (1.0, 0.1, 1.35, 1.4),
        (0.0, 0.02, -2.0, 2.0),
    ],
)
def test_trunc_normal_is_the_truncated_distribution(mean, std, a, b, seed):
    # covers both samplers: rejection (kept mass > 0.3) and inverse CDF (far tails)
    w = ti.trunc_normal_(torch.empty(20000, dtype=torch.float64), mean, std, a, b, generator=seed)
    assert a <= w.min().item() and w.max().item() <= b
    ref = stats.truncnorm((a - mean) / std, (b - mean) / std, loc=mean, scale=std)
    assert _ks(w, ref.cdf) > 1e-3
    assert abs(w.mean().item() - ref.mean()) < 5 * ref.std() / math.sqrt(w.numel())


def test_variance_scaling_truncation_is_at_two_std(seed):
    w = ti.variance_scaling_(torch.empty(OUT, IN), 1.0, "fan_in", generator=seed)
    s = math.sqrt(1.0 / IN) / 0.87962566103423978
    assert w.abs().max().item() <= 2 * s * (1 + 1e-6)
    assert w.abs().max().item() > 1.9 * s
    assert _ks(w, stats.truncnorm(-2, 2, scale=s).cdf) > 1e-3


def test_truncated_std_constant_from_the_formula():
    # std of N(0, 1) cut at +-2, computed independently in float64
    z = stats.norm.cdf(2) - stats.norm.cdf(-2)
    var = 1 - 2 * 2 * stats.norm.pdf(2) / z
    assert math.sqrt(var) == pytest.approx(0.87962566103423978, rel=1e-12)


@pytest.mark.parametrize("shape", [(8, 20), (20, 8), (12, 3, 3, 3), (5, 5)])
@pytest.mark.parametrize("gain", [1.0, 0.5, math.sqrt(2)])
def test_orthogonal_rows_or_columns_are_orthonormal(shape, gain, seed):
    w = ti.orthogonal_(torch.empty(shape, dtype=torch.float64), gain=gain, generator=seed)
    m = w.reshape(shape[0], -1)
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    torch.testing.assert_close(gram, gain**2 * torch.eye(gram.shape[0], dtype=torch.float64))


def test_orthogonal_is_haar_distributed(seed):
    # for Haar Q of size n, Q[0, 0]^2 ~ Beta(1/2, (n-1)/2) and its sign is +-1 equally often
    n = 16
    firsts = np.array(
        [
            ti.orthogonal_(torch.empty(n, n, dtype=torch.float64), generator=seed)[0, 0].item()
            for _ in range(400)
        ]
    )
    assert stats.kstest(firsts**2, stats.beta(0.5, (n - 1) / 2).cdf).pvalue > 1e-3
    assert abs((firsts > 0).mean() - 0.5) < 5 * 0.5 / math.sqrt(400)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 24), cols=st.integers(1, 24), gain=st.floats(0.0, 3.0))
def test_orthogonal_property(rows, cols, gain):
    w = ti.orthogonal_(
        torch.empty(rows, cols, dtype=torch.float64),
        gain=gain,
        generator=torch.Generator().manual_seed(rows * 31 + cols),
    )
    gram = w @ w.T if rows <= cols else w.T @ w
    eye = torch.eye(min(rows, cols), dtype=torch.float64)
    torch.testing.assert_close(gram, gain**2 * eye, atol=1e-10, rtol=0)
