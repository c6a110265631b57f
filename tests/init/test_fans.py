"""fan_in_and_fan_out: torch's convention on bare tensors, exact fans with the owning module."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.init import _calculate_fan_in_and_fan_out as torch_fans

import traintech.init as ti


@pytest.mark.parametrize("shape", [(7, 3), (8, 4, 5), (8, 4, 3, 3), (8, 4, 3, 2, 2), (3, 1, 1, 1)])
def test_bare_tensor_follows_torch(shape):
    assert ti.fan_in_and_fan_out(torch.empty(shape)) == torch_fans(torch.empty(shape))


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (nn.Linear(5, 7), (5, 7)),
        (nn.Conv1d(4, 8, 3), (4 * 3, 8 * 3)),
        (nn.Conv2d(4, 8, 3), (4 * 9, 8 * 9)),
        (nn.Conv3d(4, 8, (3, 2, 1)), (4 * 6, 8 * 6)),
        (nn.Conv2d(8, 12, 3, groups=4), (2 * 9, 3 * 9)),  # torch says fan_out = 12 * 9
        (nn.Conv2d(4, 8, 3, stride=2), (4 * 9, 8 * 9 / 4)),
        (nn.ConvTranspose2d(8, 4, 4, stride=2), (8 * 16 / 4, 4 * 16)),  # torch: (64, 128)
        (nn.ConvTranspose1d(6, 9, 3, groups=3), (2 * 3, 3 * 3)),
        (nn.Embedding(100, 16), (1, 16)),
    ],
)
def test_module_hint_gives_exact_fans(module, expected):
    assert ti.fan_in_and_fan_out(module.weight, module) == pytest.approx(expected)


def test_multihead_in_proj_fans_are_per_block():
    mha = nn.MultiheadAttention(12, 3)
    assert ti.fan_in_and_fan_out(mha.in_proj_weight, mha) == (12, 12)


def _empirical_gain(layer, x):
    """Var(y) / Var(x) in the forward pass and Var(dx) / Var(dy) in the backward pass."""
    x = x.clone().requires_grad_(True)
    y = layer(x)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    (gx,) = torch.autograd.grad(y, x, gy)
    return y.var().item() / x.var().item(), gx.var().item() / gy.var().item()


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(16, 32, 3, padding=1, groups=4, bias=False),
        nn.Conv2d(16, 16, 4, stride=2, padding=1, bias=False),
        nn.ConvTranspose2d(16, 16, 4, stride=2, padding=1, bias=False),
        nn.ConvTranspose2d(16, 32, 3, padding=1, groups=2, bias=False),
    ],
)
def test_exact_fans_preserve_variance_forward_and_backward(layer, seed):
    # weight variance 1 / fan_in keeps the forward variance, 1 / fan_out the backward one
    x = torch.randn(8, 16, 24, 24, generator=seed, dtype=torch.float64)
    layer = layer.double()
    fan_in, fan_out = ti.fan_in_and_fan_out(layer.weight, layer)
    with torch.no_grad():
        layer.weight.normal_(0, 1 / math.sqrt(fan_in), generator=seed)
    forward, _ = _empirical_gain(layer, x)
    with torch.no_grad():
        layer.weight.normal_(0, 1 / math.sqrt(fan_out), generator=seed)
    _, backward = _empirical_gain(layer, x)
    # borders (padding) lose a few terms; within 15% where torch's fans are off by 2x to 4x
    assert forward == pytest.approx(1.0, rel=0.15)
    assert backward == pytest.approx(1.0, rel=0.15)


def test_kaiming_with_module_uses_exact_fans(seed):
    conv_t = nn.ConvTranspose2d(8, 4, 4, stride=2)
    ti.kaiming_normal_(conv_t.weight, nonlinearity="relu", generator=seed, module=conv_t)
    n = conv_t.weight.numel()
    expected = 2.0 / 32.0
    assert abs(conv_t.weight.double().var().item() - expected) < 5 * expected * math.sqrt(2 / n)


def test_module_hint_rejects_a_foreign_tensor():
    conv = nn.Conv2d(4, 8, 3)
    with pytest.raises(ValueError, match="tensor of shape"):
        ti.fan_in_and_fan_out(torch.empty(8, 4, 5, 5), conv)


@settings(max_examples=40, deadline=None)
@given(
    groups=st.integers(1, 3),
    per_group_in=st.integers(1, 3),
    per_group_out=st.integers(1, 3),
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    transposed=st.booleans(),
)
def test_conv_fans_follow_the_formula(
    groups, per_group_in, per_group_out, kernel, stride, transposed
):
    c_in, c_out = groups * per_group_in, groups * per_group_out
    cls = nn.ConvTranspose2d if transposed else nn.Conv2d
    layer = cls(c_in, c_out, kernel, stride=stride, groups=groups, bias=False, device="meta")
    k, s = kernel[0] * kernel[1], stride[0] * stride[1]
    if transposed:
        expected = (per_group_in * k / s, per_group_out * k)
    else:
        expected = (per_group_in * k, per_group_out * k / s)
    assert ti.fan_in_and_fan_out(layer.weight, layer) == pytest.approx(expected)
    assert ti.fan_in_and_fan_out(layer.weight) == torch_fans(layer.weight)
