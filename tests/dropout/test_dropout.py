"""Element-wise Dropout: inverted and original, statistics, gradients, low-memory mode."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import traintech.dropout as D
from traintech.dropout import functional as F
from traintech.dropout._kernel import FAST_MIN_NUMEL

from _helpers import assert_close_to_f64

SMALL = (16, 32)  # torch.rand path
LARGE = (128, 1024)  # bit-sliced CPU path (>= FAST_MIN_NUMEL elements)
assert math.prod(LARGE) >= FAST_MIN_NUMEL > math.prod(SMALL)


def _ref(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    return x.double() * keep.double() * scale


@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["small", "large"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_inverted_matches_mask_times_scale(shape, dtype, p, seed) -> None:
    x = (torch.rand(shape, generator=seed) + 0.5).to(dtype)  # no zeros in x
    y = F.dropout(x, p, True, generator=seed)
    keep = y != 0
    assert_close_to_f64(y, _ref(x, keep, 1 / (1 - p)), dtype=dtype)


@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["small", "large"])
@pytest.mark.parametrize("low_memory", [False, True])
def test_gradient_is_mask_times_scale(shape, low_memory, seed) -> None:
    p = 0.3
    x = (torch.rand(shape, generator=seed, dtype=torch.float64) + 0.5).requires_grad_()
    g = torch.randn(shape, generator=seed, dtype=torch.float64)
    y = F.dropout(x, p, True, generator=seed, low_memory=low_memory)
    y.backward(g)
    keep = (y != 0).double()
    torch.testing.assert_close(y, x.detach() * keep / (1 - p), rtol=1e-12, atol=0)
    torch.testing.assert_close(x.grad, g * keep / (1 - p), rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["small", "large"])
def test_low_memory_gives_same_mask_and_grad(shape) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3), requires_grad=True)
    results = []
    for low in (False, True):
        x.grad = None
        y = F.dropout(x, 0.2, True, generator=torch.Generator().manual_seed(5), low_memory=low)
        y.sum().backward()
        results.append((y.detach(), x.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)


@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["small", "large"])
def test_saved_for_backward(shape) -> None:
    saved: dict[bool, list[torch.Tensor]] = {False: [], True: []}
    x = torch.randn(shape, requires_grad=True)
    for low in (False, True):

        def pack(t: torch.Tensor, low: bool = low) -> torch.Tensor:
            saved[low].append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            F.dropout(x, 0.2, True, low_memory=low).sum().backward()
    assert saved[True] == []  # low-memory mode: the mask is regenerated in backward
    (mask,) = saved[False]
    if shape == LARGE:  # bit-packed: 1 bit per element
        assert mask.dtype == torch.int64 and mask.numel() * 64 == x.numel()
    else:  # below the fast path torch's op runs: what it saves, we save
        torch_saved: list[torch.Tensor] = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: torch_saved.append(t) or t, lambda t: t
        ):
            torch.nn.functional.dropout(x, 0.2, True).sum().backward()
        assert [(t.dtype, t.shape) for t in torch_saved] == [(mask.dtype, mask.shape)]


@pytest.mark.parametrize("shape", [(1 << 18,), (2000, 37)], ids=["fast", "rand"])
@pytest.mark.parametrize("p", [0.1, 0.5, 1 / 3, 0.97, 2.0**-12])
def test_dropped_fraction_within_binomial_bound(shape, p, seed) -> None:
    x = torch.ones(shape)
    n = x.numel()
    dropped = (F.dropout(x, p, True, generator=seed) == 0).double().mean().item()
    assert abs(dropped - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1 / n


def test_every_bit_lane_is_fair(seed) -> None:
    # each of the 64 element positions of a mask word is dropped with probability p
    n_words = 8192
    y = F.dropout(torch.ones(n_words * 64), 0.5, True, generator=seed)
    lanes = (y == 0).double().view(n_words, 64).mean(0)
    bound = 5 * math.sqrt(0.25 / n_words)
    assert (lanes - 0.5).abs().max().item() <= bound
    # neighbours are independent: P(both dropped) = p**2
    d = (y == 0).double()
    both = (d[1:] * d[:-1]).mean().item()
    assert abs(both - 0.25) <= 5 * math.sqrt(0.25 * 0.75 / d.numel())


@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["small", "large"])
@pytest.mark.parametrize("mode", ["inverted", "original"])
def test_expectation_over_masks(shape, mode, seed) -> None:
    p, n_masks = 0.3, 200
    x = torch.rand(shape, generator=seed, dtype=torch.float64) + 0.5
    acc = torch.zeros_like(x)
    for _ in range(n_masks):
        acc += F.dropout(x, p, True, mode=mode, generator=seed)
    mean_train = acc / n_masks
    eval_out = F.dropout(x, p, False, mode=mode)
    # per element: std of one draw is x * sqrt(p (1-p)) * scale
    scale = 1 / (1 - p) if mode == "inverted" else 1.0
    se = x * math.sqrt(p * (1 - p)) * scale / math.sqrt(n_masks)
    z = (mean_train - eval_out) / se
    assert z.abs().max().item() < 6.0  # max over elements of ~N(0,1)
    assert abs(z.mean().item()) < 5 / math.sqrt(x.numel())


def test_original_mode_scaling(seed) -> None:
    x = torch.rand(SMALL, generator=seed) + 0.5
    y = F.dropout(x, 0.25, True, mode="original", generator=seed)
    keep = y != 0
    assert_close_to_f64(y, _ref(x, keep, 1.0))
    assert_close_to_f64(F.dropout(x, 0.25, False, mode="original"), x.double() * 0.75)


@pytest.mark.parametrize("mode", ["inverted", "original"])
def test_p_one_gives_zeros_like_torch(mode) -> None:
    x = torch.randn(5, 7)
    torch.testing.assert_close(F.dropout(x, 1.0, True, mode=mode), torch.zeros(5, 7))
    torch.testing.assert_close(nn.functional.dropout(x, 1.0, True), torch.zeros(5, 7))


@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["small", "large"])
def test_inplace(shape, seed) -> None:
    x = torch.rand(shape, generator=seed) + 0.5
    ref = F.dropout(x, 0.4, True, generator=torch.Generator().manual_seed(1))
    leaf = x.clone().requires_grad_()
    z = leaf * 1.0
    out = F.dropout(z, 0.4, True, True, generator=torch.Generator().manual_seed(1))
    assert out.data_ptr() == z.data_ptr()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    out.sum().backward()
    torch.testing.assert_close(leaf.grad, (ref != 0).float() / 0.6)


def test_drop_in_for_torch_dropout() -> None:
    ours, theirs = D.Dropout(0.2, True), nn.Dropout(0.2, True)
    assert isinstance(ours, nn.Dropout)
    assert ours.extra_repr() == theirs.extra_repr() == "p=0.2, inplace=True"
    assert ours.state_dict() == theirs.state_dict() == {}
    ours.load_state_dict(theirs.state_dict())
    assert "mode='original'" in D.Dropout(0.2, mode="original").extra_repr()


def test_module_forward_matches_functional(seed) -> None:
    x = torch.randn(LARGE, generator=seed)
    m = D.Dropout(0.3, generator=torch.Generator().manual_seed(4))
    y = F.dropout(x, 0.3, True, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(m(x), y, rtol=0, atol=0)


def test_global_rng_drives_masks_without_generator() -> None:
    x = torch.ones(LARGE)
    torch.manual_seed(0)
    a = F.dropout(x, 0.5, True)
    torch.manual_seed(0)
    b = F.dropout(x, 0.5, True)
    c = F.dropout(x, 0.5, True)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(b, c)


@settings(max_examples=25, deadline=None)
@given(
    p=st.floats(0.0, 0.99),
    numel=st.sampled_from([1, 7, 1000, FAST_MIN_NUMEL, FAST_MIN_NUMEL + 13]),
    seed_value=st.integers(0, 2**31),
    low_memory=st.booleans(),
)
def test_property_output_is_zero_or_scaled_input(p, numel, seed_value, low_memory) -> None:
    gen = torch.Generator().manual_seed(seed_value)
    x = (torch.rand(numel, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    y = F.dropout(x, p, True, generator=gen, low_memory=low_memory)
    y.backward(torch.ones_like(y))
    keep = y != 0
    torch.testing.assert_close(y, torch.where(keep, x / (1 - p), 0.0), rtol=1e-12, atol=0)
    torch.testing.assert_close(x.grad, keep.double() / (1 - p), rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["small", "large"])
@pytest.mark.parametrize("low_memory", [False, True])
def test_retain_graph_and_inference_mode(shape, low_memory) -> None:
    x = torch.randn(shape, requires_grad=True)
    y = F.dropout(x, 0.3, True, low_memory=low_memory)
    y.sum().backward(retain_graph=True)
    first = x.grad.clone()
    y.sum().backward()  # the mask is reused / regenerated identically
    torch.testing.assert_close(x.grad, 2 * first, rtol=0, atol=0)
    with torch.inference_mode():
        z = F.dropout(torch.ones(shape), 0.3, True, low_memory=low_memory)
    assert 0 < (z == 0).sum() < z.numel()
