"""AGC against timm's adaptive_clip_grad formula and a float64 reference."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from traintech.clip import AGC

SHAPES = [(), (5,), (7, 3), (6, 1), (4, 3, 2, 2), (1, 9)]


def _timm_unitwise_norm(x):
    if x.ndim <= 1:
        return x.norm(2.0)
    return x.norm(2.0, dim=tuple(range(1, x.ndim)), keepdim=True)


def _timm_agc(params, clip_factor, eps):
    """timm.utils.agc.adaptive_clip_grad as documented (timm is not importable here)."""
    for p in params:
        if p.grad is None:
            continue
        max_norm = _timm_unitwise_norm(p.detach()).clamp_(min=eps).mul_(clip_factor)
        grad_norm = _timm_unitwise_norm(p.grad.detach())
        clipped = p.grad * (max_norm / grad_norm.clamp(min=1e-6))
        p.grad.detach().copy_(torch.where(grad_norm < max_norm, p.grad, clipped))


def _params(dtype, gen, scale=0.05):
    params = []
    for i, shape in enumerate(SHAPES):
        p = nn.Parameter(torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype))
        grad = torch.randn(shape, generator=gen, dtype=torch.float64) * scale * (i + 1)
        p.grad = grad.to(dtype)
        params.append(p)
    params[-1].data.zero_()  # a zero-initialised unit: the eps floor decides
    return params


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("clip_factor, eps", [(0.01, 1e-3), (0.1, 1e-3), (0.05, 0.0)])
def test_bit_for_bit_equal_to_timm_formula(dtype, clip_factor, eps, seed):
    ours = _params(dtype, seed)
    ref = [nn.Parameter(p.detach().clone()) for p in ours]
    for r, p in zip(ref, ours, strict=True):
        r.grad = p.grad.clone()
    original = [p.grad.clone() for p in ours]
    _timm_agc(ref, clip_factor, eps)
    AGC(clip_factor, eps)(ours)
    for r, p in zip(ref, ours, strict=True):
        assert torch.equal(p.grad, r.grad)
    assert any(not torch.equal(p.grad, o) for p, o in zip(ours, original, strict=True))
    assert any(torch.equal(p.grad, o) for p, o in zip(ours, original, strict=True))


def _reference_f64(weights, grads, clip_factor, eps):
    out = []
    for w, g in zip(weights, grads, strict=True):
        w, g = w.double(), g.double()
        if g.ndim <= 1:
            wn, gn = w.pow(2).sum().sqrt(), g.pow(2).sum().sqrt()
        else:
            dims = tuple(range(1, g.ndim))
            wn = w.pow(2).sum(dims, keepdim=True).sqrt()
            gn = g.pow(2).sum(dims, keepdim=True).sqrt()
        bound = wn.clamp(min=eps) * clip_factor
        out.append(torch.where(gn < bound, g, g * bound / gn.clamp(min=1e-6)))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_float64_reference_and_reports_norms(dtype, seed):
    params = _params(dtype, seed)
    weights = [p.detach().clone() for p in params]
    grads = [p.grad.clone() for p in params]
    result = AGC(0.02)(params)
    expected = _reference_f64(weights, grads, 0.02, 1e-3)
    rtol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad.double(), e, rtol=rtol, atol=rtol * 1e-3)
    pre = math.sqrt(sum(g.double().pow(2).sum().item() for g in grads))
    post = math.sqrt(sum(e.pow(2).sum().item() for e in expected))
    assert result.norm.item() == pytest.approx(pre, rel=rtol)
    assert result.coef.item() == pytest.approx(post / pre, rel=rtol)
    assert result.coef.item() < 1
    assert result.threshold.item() == math.inf and not result.skip


def test_exclude_by_name_pattern_leaves_those_gradients():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    for p in model.parameters():
        p.grad = torch.ones_like(p) * 5.0
    clipper = AGC(0.01, exclude=["2.*"])
    result = clipper(model)
    assert torch.equal(model[2].weight.grad, torch.full((3, 8), 5.0))
    assert torch.equal(model[2].bias.grad, torch.full((3,), 5.0))
    assert (model[0].weight.grad < 5.0).all()
    total = math.sqrt(sum(p.numel() * 25.0 for p in model.parameters()))
    assert result.norm.item() == pytest.approx(total, rel=1e-6)
    other = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    for p in other.parameters():
        p.grad = torch.ones_like(p) * 5.0
    AGC(0.01, exclude="2.weight")(other.named_parameters())
    assert torch.equal(other[2].weight.grad, torch.full((3, 8), 5.0))
    assert (other[2].bias.grad < 5.0).all()


def test_exclude_needs_names_and_parameters_must_be_tensors():
    model = nn.Linear(3, 2)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="exclude"):
        AGC(exclude=["weight"])(model.parameters())
    with pytest.raises(TypeError, match=r"parameters\[1\]"):
        AGC()([model.weight, "bias"])
    with pytest.raises(TypeError, match="decide"):
        AGC().decide(torch.tensor(1.0))
    assert AGC.needs_parameters


def test_no_gradients_raises_like_every_clipper():
    w = nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="parameters has no gradients"):
        AGC()([w])


def test_state_dict_round_trip():
    clipper = AGC(0.05, 1e-4, exclude=["fc.*"])
    saved = clipper.state_dict()
    assert saved["settings"] == {"clip_factor": 0.05, "eps": 1e-4, "exclude": ["fc.*"]}
    AGC(0.05, 1e-4, exclude=["fc.*"]).load_state_dict(saved)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 6),
    clip_factor=st.floats(1e-3, 1.0),
    grad_scale=st.floats(1e-4, 1e3),
    seed_value=st.integers(0, 2**16),
)
def test_every_unit_is_bounded_and_direction_kept(rows, cols, clip_factor, grad_scale, seed_value):
    gen = torch.Generator().manual_seed(seed_value)
    w = nn.Parameter(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    w.grad = torch.randn(rows, cols, generator=gen, dtype=torch.float64) * grad_scale
    before = w.grad.clone()
    AGC(clip_factor, eps=1e-3)([w])
    bound = w.detach().norm(dim=1).clamp(min=1e-3) * clip_factor
    norm_before, norm_after = before.norm(dim=1), w.grad.norm(dim=1)
    small = norm_before < bound
    assert torch.equal(w.grad[small], before[small])
    torch.testing.assert_close(norm_after[~small], bound[~small], rtol=1e-12, atol=0)
    scale = norm_after / norm_before
    torch.testing.assert_close(w.grad, before * scale[:, None], rtol=1e-12, atol=1e-300)
