"""LayerNorm, GroupNorm, InstanceNorm against float64 references written from the formula."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import traintech.norm as tn
import traintech.norm.functional as F

from _helpers import assert_close_to_f64


def ref_standardize(x, dims, eps):
    x = x.double()
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def ref_group_norm(x, groups, weight, bias, eps):
    n, c = x.shape[:2]
    xg = x.double().reshape(n, groups, -1)
    y = ref_standardize(xg, [2], eps).reshape(x.shape)
    view = [1, c] + [1] * (x.dim() - 2)
    if weight is not None:
        y = y * weight.double().view(view) + bias.double().view(view)
    return y


def _grads(y, inputs, g):
    return torch.autograd.grad(y, inputs, g)


@pytest.mark.parametrize("shape", [(4, 8), (2, 3, 8), (2, 3, 4, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_norm_matches_reference_values_and_gradients(shape, dtype, seed):
    norm_shape = shape[-2:] if len(shape) > 2 else shape[-1:]
    ln = tn.LayerNorm(norm_shape, eps=1e-4).to(dtype)
    with torch.no_grad():
        ln.weight.copy_(torch.randn(norm_shape, generator=seed))
        ln.bias.copy_(torch.randn(norm_shape, generator=seed))
    x = (torch.randn(shape, generator=seed) * 2 + 1).to(dtype).requires_grad_()
    xr = x.detach().double().requires_grad_()
    wr, br = (p.detach().double().requires_grad_() for p in (ln.weight, ln.bias))
    dims = list(range(x.dim() - len(norm_shape), x.dim()))
    yr = ref_standardize(xr, dims, 1e-4) * wr + br
    y = ln(x)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert_close_to_f64(y, yr, rtol=tol, atol=tol)
    g = torch.randn(shape, generator=seed)
    got = _grads(y, (x, ln.weight, ln.bias), g.to(dtype))
    want = _grads(yr, (xr, wr, br), g.double())
    for a, b in zip(got, want, strict=True):
        assert_close_to_f64(a, b, rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize(
    ("groups", "shape"), [(1, (2, 6, 3, 3)), (3, (2, 6, 5)), (6, (3, 6, 2, 2))]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_group_norm_matches_reference(groups, shape, dtype, seed):
    gn = tn.GroupNorm(groups, shape[1], eps=1e-4).to(dtype)
    with torch.no_grad():
        gn.weight.copy_(torch.randn(shape[1], generator=seed))
        gn.bias.copy_(torch.randn(shape[1], generator=seed))
    x = (torch.randn(shape, generator=seed) * 2 - 1).to(dtype).requires_grad_()
    xr = x.detach().double().requires_grad_()
    wr, br = (p.detach().double().requires_grad_() for p in (gn.weight, gn.bias))
    yr = ref_group_norm(xr, groups, wr, br, 1e-4)
    y = gn(x)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert_close_to_f64(y, yr, rtol=tol, atol=tol)
    g = torch.randn(shape, generator=seed)
    got = _grads(y, (x, gn.weight, gn.bias), g.to(dtype))
    want = _grads(yr, (xr, wr, br), g.double())
    for a, b in zip(got, want, strict=True):
        assert_close_to_f64(a, b, rtol=tol * 10, atol=tol * 10)


def test_group_norm_one_group_equals_layer_norm_over_chw(seed):
    x = torch.randn(3, 4, 5, 6, generator=seed, dtype=torch.float64)
    gn = tn.GroupNorm(1, 4, affine=False).double()
    ln = tn.LayerNorm((4, 5, 6), elementwise_affine=False).double()
    torch.testing.assert_close(gn(x), ln(x), rtol=1e-12, atol=1e-12)
    assert_close_to_f64(gn(x), ref_standardize(x, [1, 2, 3], 1e-5))


def test_group_norm_channels_groups_equals_instance_norm(seed):
    x = torch.randn(3, 4, 5, 6, generator=seed, dtype=torch.float64)
    torch.testing.assert_close(
        tn.GroupNorm(4, 4, affine=False).double()(x), tn.InstanceNorm2d(4).double()(x)
    )


@pytest.mark.parametrize(
    ("cls", "shape"),
    [(tn.InstanceNorm1d, (2, 3, 7)), (tn.InstanceNorm2d, (2, 3, 4, 5)),
     (tn.InstanceNorm3d, (2, 3, 2, 3, 4)), (tn.InstanceNorm2d, (3, 4, 5))],  # fmt: skip
)
def test_instance_norm_matches_reference(cls, shape, seed):
    layer = cls(3, affine=True).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(3, generator=seed))
        layer.bias.copy_(torch.randn(3, generator=seed))
    x = torch.randn(shape, generator=seed, dtype=torch.float64) * 3 + 2
    batched = x if x.dim() == cls._spatial_dims + 2 else x.unsqueeze(0)
    dims = list(range(2, batched.dim()))
    ref = ref_group_norm(batched, 3, layer.weight, layer.bias, 1e-5)
    ref2 = ref_standardize(batched, dims, 1e-5) * layer.weight.detach().view(
        [1, 3] + [1] * len(dims)
    ) + layer.bias.detach().view([1, 3] + [1] * len(dims))
    torch.testing.assert_close(ref, ref2)
    assert_close_to_f64(layer(x), ref.reshape(x.shape))


def test_instance_norm_running_stats_and_eval(seed):
    layer = tn.InstanceNorm1d(2, momentum=0.5, track_running_stats=True).double()
    x = torch.randn(3, 2, 6, generator=seed, dtype=torch.float64)
    layer(x)
    mean = x.mean(2).mean(0)
    var = x.var(2, correction=1).mean(0)
    assert_close_to_f64(layer.running_mean, 0.5 * mean)
    assert_close_to_f64(layer.running_var, 0.5 + 0.5 * var)
    layer.eval()
    view = (1, 2, 1)
    ref = (x - layer.running_mean.view(view)) / torch.sqrt(layer.running_var.view(view) + 1e-5)
    assert_close_to_f64(layer(x), ref)


def test_instance_norm_channel_mismatch_warns_without_affine_and_raises_with_it():
    x = torch.randn(2, 5, 7)
    with pytest.warns(UserWarning, match="does not match num_features"):
        tn.InstanceNorm1d(3)(x)
    with pytest.warns(UserWarning, match="does not match num_features"):
        nn.InstanceNorm1d(3)(x)
    with pytest.raises(ValueError, match=r"num_features \(3\).*\(2, 5, 7\)"):
        tn.InstanceNorm1d(3, affine=True)(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tn.InstanceNorm1d(5)(x)


def test_instance_norm_old_checkpoint_with_running_stats_reports_them():
    sd = {"running_mean": torch.zeros(3), "running_var": torch.ones(3)}
    with pytest.raises(RuntimeError, match="Unexpected running stats buffer"):
        tn.InstanceNorm2d(3).load_state_dict(sd)
    with pytest.raises(RuntimeError, match="Unexpected running stats buffer"):
        nn.InstanceNorm2d(3).load_state_dict(sd)


def test_functional_forms_match_modules(seed):
    x = torch.randn(2, 4, 3, 3, generator=seed)
    w, b = torch.randn(4, generator=seed), torch.randn(4, generator=seed)
    torch.testing.assert_close(F.group_norm(x, 2, w, b), nn.functional.group_norm(x, 2, w, b))
    torch.testing.assert_close(F.instance_norm(x), nn.functional.instance_norm(x))
    torch.testing.assert_close(F.layer_norm(x, (3, 3)), nn.functional.layer_norm(x, (3, 3)))
    ref = ref_standardize(x, [1], 1e-5) * w.double().view(1, 4, 1, 1) + b.double().view(1, 4, 1, 1)
    assert_close_to_f64(F.channel_layer_norm(x, w, b), ref, rtol=1e-5, atol=1e-5)
    cln = tn.ChannelLayerNorm(4)
    with torch.no_grad():
        cln.weight.copy_(w)
        cln.bias.copy_(b)
    assert_close_to_f64(cln(x), ref, rtol=1e-5, atol=1e-5)
