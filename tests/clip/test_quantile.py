"""QuantileClip (AutoClip) against numpy.quantile over the window and the autoclip package."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from traintech.clip import QuantileClip
from traintech.clip._quantile import replace_sorted, window_quantile


def _sequence(steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    norms = torch.exp(0.5 * torch.randn(steps, generator=gen))
    norms[torch.rand(steps, generator=gen) < 0.05] *= 25
    return norms.double().tolist()


@pytest.mark.parametrize("quantile, window", [(0.9, 50), (0.1, 7), (0.0, 5), (1.0, 5), (0.5, 1),
                                              (0.37, 64)])
def test_threshold_is_numpy_quantile_of_the_window(quantile, window):
    norms = _sequence(160)
    clipper = QuantileClip(quantile=quantile, window=window)
    for step, x in enumerate(norms):
        result = clipper.decide(torch.tensor(x, dtype=torch.float64))
        past = norms[max(0, step - window) : step]
        expected = math.inf if not past else float(np.quantile(past, quantile))
        assert result.threshold.item() == expected, step
        assert result.coef.item() == min(1.0, expected / (x + 1e-6))


def test_history_is_the_window_in_order_and_the_state_stays_fixed():
    clipper = QuantileClip(window=6)
    norms = _sequence(40)
    for x in norms:
        clipper.decide(torch.tensor(x, dtype=torch.float64))
    assert clipper.history.tolist() == norms[-6:]
    assert clipper.state_dict()["history"].numel() == 6


def test_first_step_is_not_clipped():
    result = QuantileClip().decide(torch.tensor(1e6))
    assert result.coef.item() == 1.0 and result.threshold.item() == math.inf


@pytest.mark.parametrize("quantile, window", [(0.9, 1000), (0.5, 10), (0.2, 3)])
def test_matches_the_autoclip_package(quantile, window, seed):
    autoclip = pytest.importorskip("autoclip.torch")
    torch.manual_seed(0)
    ref_model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    our_model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    ref = autoclip.QuantileClip(
        ref_model.parameters(), quantile=quantile, history_length=window, global_threshold=True
    )
    ours = QuantileClip(quantile=quantile, window=window)
    clipped = 0
    for x in _sequence(60, seed=4):
        for a, b in zip(ref_model.parameters(), our_model.parameters(), strict=True):
            g = torch.randn(a.shape, generator=seed) * x
            a.grad, b.grad = g.clone(), g.clone()
        ref.step()
        clipped += ours(our_model.parameters()).coef.item() < 1
        for a, b in zip(ref_model.parameters(), our_model.parameters(), strict=True):
            torch.testing.assert_close(b.grad, a.grad, rtol=3e-6, atol=1e-9)
    assert clipped > 3


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(0.0, 1e6), min_size=0, max_size=30),
    quantile=st.floats(0.0, 1.0),
    size=st.integers(1, 12),
)
def test_window_quantile_equals_numpy(values, quantile, size):
    kept = values[-size:]
    ordered = torch.full((size,), math.inf, dtype=torch.float64)
    ordered[: len(kept)] = torch.tensor(sorted(kept), dtype=torch.float64)
    got = window_quantile(ordered, torch.tensor(len(values)), quantile).item()
    expected = math.inf if not kept else float(np.quantile(kept, quantile))
    assert got == expected


@settings(max_examples=80, deadline=None)
@given(
    values=st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0]) | st.floats(0, 10), min_size=1,
                    max_size=12),
    pick=st.integers(0, 11),
    new=st.sampled_from([0.5, 1.0, 2.0, 3.0, math.inf]) | st.floats(0, 10),
    pad=st.integers(0, 3),
)
def test_replace_sorted_removes_one_and_inserts_one(values, pick, new, pad):
    """Duplicates, the inf padding and equal old/new values included."""
    ordered = torch.tensor(sorted(values) + [math.inf] * pad, dtype=torch.float64)
    old = ordered[pick % len(ordered)]
    expected = sorted(ordered.tolist())
    expected.remove(old.item())
    expected = sorted(expected + [new])
    positions = torch.arange(len(ordered))
    got = replace_sorted(ordered, positions, old, torch.tensor(new, dtype=torch.float64))
    assert got.tolist() == expected
