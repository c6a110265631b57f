"""variance_profile: values against a float64 reference, backward statistics, the deep-MLP demo."""

import math

import pytest
import torch
from torch import nn

import traintech.init as ti


def test_rows_match_a_float64_reference(seed):
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(inplace=True), nn.Linear(32, 4))
    x = torch.randn(64, 16, generator=seed)
    profile = ti.variance_profile(model, x)
    assert [r.name for r in profile] == ["0", "1", "2"]
    with torch.no_grad():
        h0 = model[0](x).double()
        refs = [h0, h0.clamp_min(0), model[2](h0.clamp_min(0).float()).double()]
    for row, ref in zip(profile, refs, strict=True):
        assert row.mean == pytest.approx(ref.mean().item(), rel=1e-5, abs=1e-7)
        assert row.std == pytest.approx(ref.std(unbiased=False).item(), rel=1e-5)
        assert row.second_moment == pytest.approx(ref.square().mean().item(), rel=1e-5)
        assert row.grad_std is None
    assert profile.input.second_moment == pytest.approx(x.double().square().mean().item(), rel=1e-6)
    assert profile.column("kind") == ["Linear", "ReLU", "Linear"]


def test_backward_statistics_match_autograd_and_leave_grads_alone(seed):
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(32, 8, generator=seed)
    profile = ti.variance_profile(
        model, x, backward=True, generator=torch.Generator().manual_seed(4)
    )
    assert all(p.grad is None for p in model.parameters())
    h1 = model[0](x)
    h2 = model[1](h1)
    out = model[2](h2)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    refs = torch.autograd.grad(out, [h1, h2, out], g)
    for row, ref in zip(profile, refs, strict=True):
        ref = ref.double()
        assert row.grad_mean == pytest.approx(ref.mean().item(), abs=1e-6)
        assert row.grad_std == pytest.approx(ref.std(unbiased=False).item(), rel=1e-5)
        assert row.grad_second_moment == pytest.approx(ref.square().mean().item(), rel=1e-5)


def test_batchnorm_buffers_are_restored(seed):
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    before = model[1].running_mean.clone()
    ti.variance_profile(model, torch.randn(16, 4, generator=seed) + 3)
    assert torch.equal(model[1].running_mean, before)
    assert "BatchNorm1d" in str(ti.variance_profile(model, torch.randn(16, 4, generator=seed)))


def _mlp(depth=50, width=256):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers)


def _relu_ratios(model, x):
    profile = ti.variance_profile(model, x)
    q = profile.input.second_moment
    return torch.tensor([r.second_moment / q for r in profile if r.kind == "ReLU"])


def test_deep_relu_mlp_keeps_its_second_moment_after_init_model_and_collapses_with_n001():
    # He init keeps E[relu(y)^2] = E[x^2] in expectation; at width 256 one network's ratio
    # random-walks (log-std ~0.1 per layer), so we average the ratio over 6 networks (a 6x smaller
    # variance) and ask every layer's average to stay in [0.5, 2].
    ratios = []
    for s in range(6):
        gen = torch.Generator().manual_seed(s)
        model = _mlp()
        ti.init_model(model, generator=gen)
        x = torch.randn(256, 256, generator=gen)
        ratios.append(_relu_ratios(model, x))
    mean = torch.stack(ratios).mean(0)
    assert len(mean) == 50
    assert bool(((mean > 0.5) & (mean < 2.0)).all()), mean
    # the same network from N(0, 0.01): each layer multiplies by 256 * 1e-4 / 2 = 0.0128
    gen = torch.Generator().manual_seed(0)
    model = _mlp()
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.01, generator=gen)
                m.bias.zero_()
    small = _relu_ratios(model, torch.randn(256, 256, generator=gen))
    assert small[0] == pytest.approx(0.0128, rel=0.2)
    assert small[4] < 1e-8 and small[-1] < 1e-30
    assert math.log(small[3] / small[2]) == pytest.approx(math.log(0.0128), abs=0.3)


def test_tiny_activations_are_not_reported_as_zero():
    net = nn.Sequential(nn.Identity())
    x = torch.full((4, 8), 1e-25)  # representable in float32, its square is not
    (row,) = ti.variance_profile(net, x).rows
    assert row.second_moment == pytest.approx(1e-50, rel=1e-6)
    assert row.mean == pytest.approx(1e-25, rel=1e-6)
