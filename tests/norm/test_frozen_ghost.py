"""FrozenBatchNorm2d and GhostBatchNorm against float64 references."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import traintech.norm as tn
import traintech.norm.functional as F

from _helpers import assert_close_to_f64


def _random_bn(gen, c=4, cls=nn.BatchNorm2d):
    bn = cls(c)
    with torch.no_grad():
        bn.weight.normal_(generator=gen)
        bn.bias.normal_(generator=gen)
        bn.running_mean.normal_(generator=gen)
        bn.running_var.uniform_(0.5, 2.0, generator=gen)
        bn.num_batches_tracked.fill_(11)
    return bn


def test_frozen_loads_batchnorm_state_dict_and_matches_eval(seed):
    bn = _random_bn(seed).double()
    frozen = tn.FrozenBatchNorm2d(4).double()
    frozen.load_state_dict(bn.state_dict(), strict=True)  # num_batches_tracked ignored
    assert "num_batches_tracked" not in frozen.state_dict()
    assert list(frozen.parameters()) == []
    x = torch.randn(3, 4, 5, 5, generator=seed, dtype=torch.float64)
    view = (1, 4, 1, 1)
    ref = (x - bn.running_mean.view(view)) / torch.sqrt(bn.running_var.view(view) + 1e-5)
    ref = ref * bn.weight.detach().view(view) + bn.bias.detach().view(view)
    frozen.train()
    assert_close_to_f64(frozen(x), ref)
    assert_close_to_f64(frozen(x), bn.eval()(x))


def test_frozen_has_no_gradient_to_statistics_but_passes_input_gradient(seed):
    frozen = tn.FrozenBatchNorm2d.from_batchnorm(_random_bn(seed))
    x = torch.randn(2, 4, 3, 3, generator=seed, requires_grad=True)
    frozen(x).sum().backward()
    scale = frozen.weight / torch.sqrt(frozen.running_var + frozen.eps)
    assert_close_to_f64(x.grad, scale.view(1, 4, 1, 1).expand_as(x), rtol=1e-6, atol=1e-6)
    assert all(not b.requires_grad for b in frozen.buffers())


def test_frozen_bf16_computes_scale_in_fp32(seed):
    frozen = tn.FrozenBatchNorm2d.from_batchnorm(_random_bn(seed))
    x = torch.randn(2, 4, 3, 3, generator=seed)
    y = frozen(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    assert_close_to_f64(y, frozen(x).double(), dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="expected 4D input"):
        frozen(torch.randn(2, 4, 3))


def ref_ghost(x, sizes, weight, bias, eps):
    out = []
    for chunk in torch.split(x.double(), sizes):
        dims = [d for d in range(x.dim()) if d != 1]
        mean = chunk.mean(dims, keepdim=True)
        var = ((chunk - mean) ** 2).mean(dims, keepdim=True)
        view = [1, -1] + [1] * (x.dim() - 2)
        out.append((chunk - mean) / torch.sqrt(var + eps) * weight.view(view) + bias.view(view))
    return torch.cat(out)


@pytest.mark.parametrize(
    ("n", "vbs", "sizes"),
    [(12, 4, [4] * 3), (10, 4, [4, 4, 2]), (9, 4, [4, 5]), (3, 4, [3]), (5, 4, [5]),
     (8, 1, [1] * 8)],  # fmt: skip
)
def test_chunk_sizes(n, vbs, sizes):
    assert tn.chunk_sizes(n, vbs) == sizes


@pytest.mark.parametrize(("n", "vbs"), [(12, 4), (10, 4), (9, 4), (3, 4), (7, 2)])
@pytest.mark.parametrize("shape_tail", [(3,), (3, 2, 2)])
def test_ghost_training_matches_per_chunk_reference(n, vbs, shape_tail, seed):
    gbn = tn.GhostBatchNorm(3, virtual_batch_size=vbs, momentum=0.3).double()
    with torch.no_grad():
        gbn.weight.normal_(generator=seed)
        gbn.bias.normal_(generator=seed)
    x = torch.randn(n, *shape_tail, generator=seed, dtype=torch.float64) * 2 + 1
    x.requires_grad_()
    xr = x.detach().clone().requires_grad_()
    wr, br = (p.detach().clone().requires_grad_() for p in (gbn.weight, gbn.bias))
    sizes = tn.chunk_sizes(n, vbs)
    y, yr = gbn(x), ref_ghost(xr, sizes, wr, br, 1e-5)
    assert_close_to_f64(y, yr)
    g = torch.randn(y.shape, generator=seed, dtype=torch.float64)
    y.backward(g)
    yr.backward(g)
    assert_close_to_f64(x.grad, xr.grad, rtol=1e-10, atol=1e-10)
    assert_close_to_f64(gbn.weight.grad, wr.grad, rtol=1e-10, atol=1e-10)
    # running stats: one update with the size-weighted average of chunk means / unbiased vars
    means, vars_ = [], []
    for chunk in torch.split(x.detach(), sizes):
        dims = [d for d in range(x.dim()) if d != 1]
        means.append(chunk.mean(dims) * len(chunk) / n)
        vars_.append(chunk.var(dims, correction=1) * len(chunk) / n)
    assert_close_to_f64(gbn.running_mean, 0.3 * sum(means))
    assert_close_to_f64(gbn.running_var, 0.7 + 0.3 * sum(vars_))
    assert int(gbn.num_batches_tracked) == 1


def test_ghost_with_one_chunk_equals_batchnorm_and_eval_is_batchnorm(seed):
    gbn, bn = tn.GhostBatchNorm(3, virtual_batch_size=64), tn.BatchNorm2d(3)
    x = torch.randn(8, 3, 4, 4, generator=seed)
    torch.testing.assert_close(gbn(x), bn(x))
    torch.testing.assert_close(gbn.running_mean, bn.running_mean)
    torch.testing.assert_close(gbn.running_var, bn.running_var)
    gbn.eval()
    bn.eval()
    torch.testing.assert_close(gbn(x), bn(x))
    # a BatchNorm checkpoint loads into GhostBatchNorm and back
    bn2 = nn.BatchNorm2d(3)
    bn2.load_state_dict(gbn.state_dict(), strict=True)
    torch.testing.assert_close(gbn(x), bn2.eval()(x))


def test_ghost_remainder_of_one_sample_without_spatial_dims_is_merged(seed):
    gbn = tn.GhostBatchNorm(2, virtual_batch_size=4)
    x = torch.randn(9, 2, generator=seed)  # 4 + 5, never a lone sample
    y = gbn(x)
    assert torch.isfinite(y).all()
    assert_close_to_f64(y[4:], ref_ghost(x[4:], [5], torch.ones(2), torch.zeros(2), 1e-5),
                        rtol=1e-5, atol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        gbn(torch.randn(1, 2))
    assert int(gbn.num_batches_tracked) == 1


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 40), vbs=st.integers(1, 16), seed_=st.integers(0, 1000))
def test_ghost_functional_matches_reference_for_any_split(n, vbs, seed_):
    gen = torch.Generator().manual_seed(seed_)
    x = torch.randn(n, 3, 2, generator=gen, dtype=torch.float64)
    w, b = torch.randn(3, generator=gen, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    y = F.ghost_batch_norm(x, vbs, weight=w, bias=b, training=True)
    assert_close_to_f64(y, ref_ghost(x, tn.chunk_sizes(n, vbs), w, b, 1e-5))
