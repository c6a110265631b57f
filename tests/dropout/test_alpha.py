"""AlphaDropout / FeatureAlphaDropout: torch's formula, mean and variance kept for SELU."""

from __future__ import annotations

import math

import pytest
import torch

import traintech.dropout as D
from traintech.dropout import functional as F
from traintech.dropout._alpha import apply_alpha

ALPHA = 1.6732632423543772848170429916717
LAMBDA = 1.0507009873554804934193349852946


def _ref(x: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    # Klambauer et al. 2017, eq. for alpha dropout, written independently in float64
    alpha_prime = -LAMBDA * ALPHA
    q = 1 - p
    a = (q + alpha_prime**2 * q * (1 - q)) ** -0.5
    b = -a * (1 - q) * alpha_prime
    k = keep.double()
    return a * (x.double() * k + alpha_prime * (1 - k)) + b


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5])
def test_equals_torch_alpha_dropout_given_the_same_mask(p) -> None:
    x = torch.randn(64, 33, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    theirs = torch.nn.functional.alpha_dropout(x, p, training=True)
    # torch's dropped units all take the value a * alpha' * (1 - p)
    alpha_prime = -LAMBDA * ALPHA
    a = ((1 - p) * (1 + p * alpha_prime**2)) ** -0.5
    keep = (theirs - a * alpha_prime * (1 - p)).abs() > 1e-5
    assert 0 < keep.sum() < keep.numel()
    torch.testing.assert_close(apply_alpha(x, keep, p), theirs, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(apply_alpha(x.double(), keep, p), _ref(x, keep, p))


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_keeps_zero_mean_unit_variance(p, seed) -> None:
    n = 1 << 18
    x = torch.randn(n, generator=seed, dtype=torch.float64)
    y = F.alpha_dropout(x, p, True, generator=seed)
    # 5 standard errors: the mean's se is 1/sqrt(n); the variance's is about sqrt(var(y^2)/n)
    assert abs(y.mean().item()) < 5 / math.sqrt(n)
    se_var = math.sqrt(((y**2 - 1) ** 2).mean().item() / n)
    assert abs(y.var().item() - 1) < 5 * se_var


def test_output_values_follow_formula(seed) -> None:
    p = 0.3
    x = torch.randn(50, 40, generator=seed, dtype=torch.float64)
    y = F.alpha_dropout(x, p, True, generator=torch.Generator().manual_seed(9))
    keep = F.dropout(torch.ones(50, 40), p, True, generator=torch.Generator().manual_seed(9)) != 0
    torch.testing.assert_close(y, _ref(x, keep, p))


def test_feature_alpha_masks_channels(seed) -> None:
    p = 0.5
    x = torch.randn(8, 6, 5, generator=seed, dtype=torch.float64)
    y = F.feature_alpha_dropout(x, p, True, generator=seed)
    alpha_prime = -LAMBDA * ALPHA
    a = ((1 - p) * (1 + p * alpha_prime**2)) ** -0.5
    dropped = (y - a * alpha_prime * (1 - p)).abs() < 1e-12
    assert torch.equal(dropped.all(-1), dropped.any(-1))
    keep = ~dropped[..., :1]
    torch.testing.assert_close(y, _ref(x, keep.expand_as(x), p))


def test_training_defaults_to_false_like_torch(seed) -> None:
    x = torch.randn(100, generator=seed)
    assert torch.equal(F.alpha_dropout(x, 0.5, generator=seed), x)
    assert torch.equal(torch.nn.functional.alpha_dropout(x, 0.5), x)
    assert torch.equal(
        F.feature_alpha_dropout(x.view(4, 5, 5), 0.5, generator=seed), x.view(4, 5, 5)
    )
    assert not torch.equal(F.alpha_dropout(x, 0.5, True, generator=seed), x)


@pytest.mark.parametrize("cls", [D.AlphaDropout, D.FeatureAlphaDropout])
def test_p_one_rejected(cls) -> None:
    with pytest.raises(ValueError, match="p"):
        cls(1.0)
    with pytest.raises(ValueError, match="p"):
        F.alpha_dropout(torch.ones(3), 1.0, True)


@pytest.mark.parametrize("cls", [D.AlphaDropout, D.FeatureAlphaDropout])
def test_drop_in_for_torch(cls) -> None:
    torch_cls = getattr(torch.nn, cls.__name__)
    assert isinstance(cls(0.2), torch_cls)
    assert cls(0.2).extra_repr() == torch_cls(0.2).extra_repr()
