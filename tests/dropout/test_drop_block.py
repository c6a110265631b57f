"""DropBlock2d: contiguous squares, the seed rate, the dropped fraction, rescaling."""

from __future__ import annotations

import math

import pytest
import torch

import traintech.dropout as D
from traintech.dropout import functional as F
from traintech.dropout._block_rate import block_seed_rate, paper_rate


def _ref_fraction(gamma: float, s: int, h: int, w: int) -> float:
    # float64 reference: cover count n(y, x) by brute force over all valid block corners
    n = torch.zeros(h, w, dtype=torch.float64)
    for i in range(h - s + 1):
        for j in range(w - s + 1):
            n[i : i + s, j : j + s] += 1
    return (1 - (1 - gamma) ** n).mean().item()


@pytest.mark.parametrize(
    ("p", "s", "h", "w"), [(0.2, 3, 16, 16), (0.1, 7, 14, 14), (0.3, 2, 9, 12)]
)
def test_rates(p, s, h, w) -> None:
    paper = paper_rate(p, s, h, w)
    assert paper == pytest.approx(p / s**2 * h * w / ((h - s + 1) * (w - s + 1)), rel=1e-12)
    # the paper's rate under-drops because overlapping squares are counted twice
    assert _ref_fraction(paper, s, h, w) < p
    assert _ref_fraction(block_seed_rate(p, s, h, w), s, h, w) == pytest.approx(p, abs=1e-9)


@pytest.mark.parametrize("exact_rate", [True, False])
@pytest.mark.parametrize(("p", "s", "hw"), [(0.2, 3, 12), (0.1, 5, 10), (0.4, 1, 6)])
def test_dropped_fraction(exact_rate, p, s, hw, seed) -> None:
    x = torch.ones(64, 8, hw, hw)
    y = F.drop_block2d(x, p, s, True, exact_rate=exact_rate, generator=seed)
    frac = (y == 0).double().mean().item()
    gamma = block_seed_rate(p, s, hw, hw, exact_rate)
    expected = _ref_fraction(gamma, s, hw, hw)
    if exact_rate:
        assert expected == pytest.approx(p, abs=1e-9)
    # units of one map are correlated; bound the error with the per-map fractions' spread
    per_map = (y == 0).double().mean((-2, -1)).flatten()
    se = per_map.std().item() / math.sqrt(per_map.numel())
    assert abs(frac - expected) < 5 * se + 1e-12


def test_dropped_regions_are_squares_inside_the_map(seed) -> None:
    s = 3
    y = F.drop_block2d(torch.ones(16, 4, 10, 10), 0.3, s, True, generator=seed)
    dropped = (y == 0).double().reshape(-1, 1, 10, 10)
    # a unit is dropped iff some fully dropped s x s square (inside the map) contains it
    full = torch.nn.functional.avg_pool2d(dropped, s, stride=1) > 1 - 1e-9
    covered = torch.nn.functional.max_pool2d(
        torch.nn.functional.pad(full.double(), (s - 1,) * 4), s, stride=1
    )
    torch.testing.assert_close(covered, dropped, rtol=0, atol=0)


def test_rescaled_by_count_ratio(seed) -> None:
    x = torch.rand(4, 3, 8, 8, generator=seed, dtype=torch.float64) + 0.5
    y = F.drop_block2d(x, 0.25, 3, True, generator=seed)
    keep = (y != 0).double()
    torch.testing.assert_close(y, x * keep * keep.numel() / keep.sum())


def test_unbatched_and_module(seed) -> None:
    x = torch.rand(3, 8, 8, generator=seed) + 0.5
    m = D.DropBlock2d(0.3, 2, generator=torch.Generator().manual_seed(5))
    y = F.drop_block2d(x, 0.3, 2, True, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(m(x), y, rtol=0, atol=0)
    assert (y == 0).any()


def test_p_one_drops_everything() -> None:
    torch.testing.assert_close(
        F.drop_block2d(torch.ones(2, 2, 5, 5), 1.0, 2, True), torch.zeros(2, 2, 5, 5)
    )


@pytest.mark.parametrize("block_size", [0, -1, 9])
def test_bad_block_size(block_size) -> None:
    with pytest.raises(ValueError, match="block_size"):
        F.drop_block2d(torch.ones(1, 1, 8, 8), 0.1, block_size, True)


def test_bad_block_size_at_construction_and_forward() -> None:
    with pytest.raises(ValueError, match="block_size"):
        D.DropBlock2d(0.1, 0)
    with pytest.raises(TypeError, match="block_size"):
        D.DropBlock2d(0.1, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="block_size"):
        D.DropBlock2d(0.1, 5)(torch.ones(1, 1, 4, 8))


def test_wrong_rank() -> None:
    with pytest.raises(ValueError, match="input"):
        F.drop_block2d(torch.ones(8, 8), 0.1, 2, True)
