"""DropPath: whole samples dropped, per-depth rates."""

from __future__ import annotations

import math

import pytest
import torch

import traintech.dropout as D
from traintech.dropout import functional as F


@pytest.mark.parametrize("scale_by_keep", [True, False])
@pytest.mark.parametrize("shape", [(32,), (32, 5), (32, 3, 4, 4)])
def test_whole_samples_dropped(scale_by_keep, shape, seed) -> None:
    p = 0.3
    x = torch.rand(shape, generator=seed, dtype=torch.float64) + 0.5
    y = F.drop_path(x, p, True, scale_by_keep, seed)
    dropped = (y == 0).reshape(shape[0], -1)
    assert torch.equal(dropped.all(1), dropped.any(1))
    keep = (~dropped[:, 0]).double().reshape(-1, *([1] * (len(shape) - 1)))
    scale = 1 / (1 - p) if scale_by_keep else 1.0
    torch.testing.assert_close(y, x * keep * scale)


def test_sample_drop_fraction(seed) -> None:
    p, n = 0.2, 1 << 14
    y = F.drop_path(torch.ones(n, 2), p, True, generator=seed)
    frac = (y[:, 0] == 0).double().mean().item()
    assert abs(frac - p) <= 5 * math.sqrt(p * (1 - p) / n)


def test_residual_expectation(seed) -> None:
    p, n = 0.25, 4000
    x = torch.full((n, 1), 2.0, dtype=torch.float64)
    mean = F.drop_path(x, p, True, generator=seed).mean().item()
    se = 2.0 * math.sqrt(p / (1 - p)) / math.sqrt(n)
    assert abs(mean - 2.0) < 5 * se


def test_training_has_no_silent_default() -> None:
    with pytest.raises(TypeError):
        F.drop_path(torch.ones(3, 2), 0.5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="training"):
        F.drop_path(torch.ones(3, 2), 0.5, 0.1)  # type: ignore[arg-type]


def test_p_one_drops_everything() -> None:
    torch.testing.assert_close(F.drop_path(torch.ones(4, 3), 1.0, True), torch.zeros(4, 3))


@pytest.mark.parametrize(("rate", "depth"), [(0.1, 12), (0.3, 4), (0.5, 2), (0.2, 1)])
def test_drop_path_rates_are_linear(rate, depth) -> None:
    rates = D.drop_path_rates(rate, depth)
    ref = torch.linspace(0, rate, depth, dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(rates, dtype=torch.float64), ref)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"depth": 0}, "depth"), ({"max_rate": 1.5}, "max_rate")]
)
def test_drop_path_rates_bad_input(kwargs, match) -> None:
    args = {"max_rate": 0.1, "depth": 3} | kwargs
    with pytest.raises(ValueError, match=match):
        D.drop_path_rates(**args)


def test_extra_repr() -> None:
    assert D.DropPath(0.1).extra_repr() == "p=0.1, scale_by_keep=True"
