"""RMSNorm and the fused residual add + norm: float64 reference, torch parity, gradcheck."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import traintech.norm as tn
import traintech.norm.functional as F

from _helpers import assert_close_to_f64


def ref_rms_norm(x, k, weight, eps):
    x = x.double()
    dims = list(range(x.dim() - k, x.dim()))
    y = x / torch.sqrt((x * x).mean(dims, keepdim=True) + eps)
    return y if weight is None else y * weight.double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("affine", [True, False])
def test_rms_norm_values_and_gradients_match_reference(dtype, affine, seed):
    layer = tn.RMSNorm(16, eps=1e-6, elementwise_affine=affine).to(dtype)
    if affine:
        with torch.no_grad():
            layer.weight.copy_(torch.randn(16, generator=seed))
    x = (torch.randn(3, 5, 16, generator=seed) * 3).to(dtype).requires_grad_()
    xr = x.detach().double().requires_grad_()
    wr = layer.weight.detach().double().requires_grad_() if affine else None
    y, yr = layer(x), ref_rms_norm(xr, 1, wr, 1e-6)
    assert y.dtype == dtype
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
    assert_close_to_f64(y, yr, rtol=tol[dtype], atol=tol[dtype])
    g = torch.randn(3, 5, 16, generator=seed)
    y.backward(g.to(dtype))
    yr.backward(g.double())
    assert_close_to_f64(x.grad, xr.grad, rtol=tol[dtype] * 4, atol=tol[dtype] * 4)
    if affine:
        assert layer.weight.grad.dtype == dtype
        assert_close_to_f64(layer.weight.grad, wr.grad, rtol=tol[dtype] * 4, atol=tol[dtype] * 20)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("k", [1, 2])
def test_rms_norm_gradcheck_float64(affine, k, seed):
    shape = (3, 4, 5)
    x = torch.randn(shape, generator=seed, dtype=torch.float64, requires_grad=True)
    w = torch.randn(shape[-k:], generator=seed, dtype=torch.float64, requires_grad=True)

    def fn(x, w):
        return F.rms_norm(x, shape[-k:], w if affine else None, 1e-3)

    assert torch.autograd.gradcheck(fn, (x, w))
    # the backward is itself differentiable (create_graph=True takes the composite branch)
    assert torch.autograd.gradgradcheck(fn, (x, w))


@settings(max_examples=25, deadline=None)
@given(
    lead=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    last=st.integers(1, 33),
    scale=st.floats(1e-2, 1e2),
    seed_=st.integers(0, 2**16),
)
def test_rms_norm_matches_torch_on_random_shapes(lead, last, scale, seed_):
    gen = torch.Generator().manual_seed(seed_)
    x = (torch.randn([*lead, last], generator=gen) * scale).requires_grad_()
    w = torch.randn(last, generator=gen).requires_grad_()
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y = F.rms_norm(x, (last,), w)
    y2 = nn.functional.rms_norm(x2, (last,), w2)
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-5)
    g = torch.randn(y.shape, generator=gen)
    y.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4 / scale)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_default_eps_is_torchs(dtype, seed):
    # tiny inputs make eps dominate, so the choice of eps shows in the output
    x = torch.randn(4, 8, generator=seed).to(dtype) * 1e-4
    ours, theirs = tn.RMSNorm(8).to(dtype), nn.RMSNorm(8).to(dtype)
    assert ours.eps is None
    torch.testing.assert_close(ours(x), theirs(x))
    eps = torch.finfo(torch.float32 if dtype != torch.float64 else torch.float64).eps
    assert_close_to_f64(ours(x), ref_rms_norm(x, 1, None, eps), dtype=dtype)


def test_rms_norm_saves_only_input_and_rstd(seed):
    x = torch.randn(6, 32, generator=seed, requires_grad=True)
    layer = tn.RMSNorm(32)
    y = layer(x)
    saved = [t for t in y.grad_fn.saved_tensors if t is not None]
    assert sorted(t.numel() for t in saved) == [6, 32, 6 * 32]  # rstd, weight, x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_add_rms_norm_matches_add_then_norm(dtype, seed):
    layer = tn.FusedAddRMSNorm(16, eps=1e-5).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(16, generator=seed))
    x = torch.randn(2, 7, 16, generator=seed).to(dtype).requires_grad_()
    r = torch.randn(2, 7, 16, generator=seed).to(dtype).requires_grad_()
    xr, rr = (t.detach().double().requires_grad_() for t in (x, r))
    wr = layer.weight.detach().double().requires_grad_()
    y, h = layer(x, r)
    hr = xr + rr
    yr = ref_rms_norm(hr, 1, wr, 1e-5)
    tol = 1e-5 if dtype == torch.float32 else 1.6e-2
    assert_close_to_f64(h, hr, rtol=tol, atol=tol)
    assert_close_to_f64(y, yr, rtol=tol, atol=tol)
    gy, gh = torch.randn(2, 7, 16, generator=seed), torch.randn(2, 7, 16, generator=seed)
    # the residual stream continues: its gradient joins the norm's
    (y * gy.to(dtype)).sum().add((h * gh.to(dtype)).sum()).backward()
    (yr * gy.double()).sum().add((hr * gh.double()).sum()).backward()
    assert_close_to_f64(x.grad, xr.grad, rtol=tol * 4, atol=tol * 4)
    assert_close_to_f64(r.grad, rr.grad, rtol=tol * 4, atol=tol * 4)
    assert_close_to_f64(layer.weight.grad, wr.grad, rtol=tol * 4, atol=tol * 20)


def test_fused_add_rms_norm_gradcheck_and_no_residual(seed):
    x = torch.randn(3, 6, generator=seed, dtype=torch.float64, requires_grad=True)
    r = torch.randn(3, 6, generator=seed, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, generator=seed, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: F.fused_add_rms_norm(a, b, (6,), c, 1e-3),
                                    (x, r, w))  # fmt: skip
    y, h = F.fused_add_rms_norm(x, None, (6,), w, 1e-3)
    assert h is x
    assert_close_to_f64(y, ref_rms_norm(x, 1, w, 1e-3))


@pytest.mark.parametrize("residual", [True, False])
def test_fused_add_layer_norm_matches_reference(residual, seed):
    layer = tn.FusedAddLayerNorm(8).double()
    with torch.no_grad():
        layer.weight.normal_(generator=seed)
        layer.bias.normal_(generator=seed)
    x = torch.randn(4, 8, generator=seed, dtype=torch.float64, requires_grad=True)
    r = torch.randn(4, 8, generator=seed, dtype=torch.float64, requires_grad=True)
    y, h = layer(x, r if residual else None)
    hr = x + r if residual else x
    mean = hr.mean(-1, keepdim=True)
    var = ((hr - mean) ** 2).mean(-1, keepdim=True)
    ref = (hr - mean) / torch.sqrt(var + 1e-5) * layer.weight + layer.bias
    assert_close_to_f64(h, hr)
    assert_close_to_f64(y, ref)
    assert torch.autograd.gradcheck(
        lambda a, b: F.fused_add_layer_norm(a, b, (8,), layer.weight, layer.bias), (x, r)
    )


def test_fused_layers_share_state_dict_with_plain_layers(seed):
    rms = nn.RMSNorm(8)
    rms.weight.data.normal_(generator=seed)
    fused = tn.FusedAddRMSNorm(8)
    fused.load_state_dict(rms.state_dict(), strict=True)
    assert torch.equal(fused.weight, rms.weight)
    ln = nn.LayerNorm(8)
    fln = tn.FusedAddLayerNorm(8)
    fln.load_state_dict(ln.state_dict(), strict=True)


@pytest.mark.slow
def test_rms_norm_and_fused_add_work_under_torch_compile(seed):
    torch._dynamo.reset()
    layer, fused = tn.RMSNorm(8), tn.FusedAddRMSNorm(8)
    x = torch.randn(2, 3, 8, generator=seed, requires_grad=True)
    r = torch.randn(2, 3, 8, generator=seed)
    y = torch.compile(layer, backend="aot_eager")(x)
    y.sum().backward()
    gx = x.grad.clone()
    x.grad = None
    layer(x).sum().backward()
    torch.testing.assert_close(y, layer(x))
    torch.testing.assert_close(gx, x.grad)
    yf, hf = torch.compile(fused, backend="aot_eager")(x, r)
    y2, h2 = fused(x, r)
    torch.testing.assert_close(yf, y2)
    torch.testing.assert_close(hf, h2)


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_under_cpu_autocast_matches_torch(dtype, seed):
    x = torch.randn(4, 64, generator=seed).to(dtype).requires_grad_()
    ours, theirs = tn.RMSNorm(64), nn.RMSNorm(64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya, yb = ours(x), theirs(x)
    assert ya.dtype == yb.dtype
    torch.testing.assert_close(ya, yb)
    ga = torch.autograd.grad(ya.float().sum(), [x, ours.weight])
    gb = torch.autograd.grad(yb.float().sum(), [x, theirs.weight])
    for a, b in zip(ga, gb, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("fused", [False, True])
def test_blocked_cpu_kernel_equals_single_block(dtype, affine, fused, seed, monkeypatch):
    import traintech.norm._rms_norm as rms_module

    x = torch.randn(11, 16, generator=seed).to(dtype).requires_grad_()
    r = torch.randn(11, 16, generator=seed).to(dtype).requires_grad_()
    w = torch.randn(16, generator=seed).to(dtype).requires_grad_()
    gy, gh = (torch.randn(11, 16, generator=seed).to(dtype) for _ in range(2))
    weight = w if affine else None
    inputs = [x, r, w] if affine else [x, r]
    results = []
    itemsize = 8 if dtype == torch.float64 else 4  # blocks are sized in the stat dtype
    # one block; forward blocks of 1 row (the fp32+ backward's correction: 4 + 4 + 3 rows)
    for block_bytes in (1 << 30, 16 * itemsize):
        monkeypatch.setattr(rms_module, "_CPU_BLOCK_BYTES", block_bytes)
        if fused:
            y, h = F.fused_add_rms_norm(x, r, (16,), weight, 1e-5)
            outs, grads_in = (y, h), (gy, gh)
        else:
            y = F.rms_norm(x + r, (16,), weight, 1e-5)
            outs, grads_in = (y,), (gy,)
        results.append([*outs, *torch.autograd.grad(outs, inputs, grads_in)])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # and the blocked result against the float64 reference
    xr, rr = x.detach().double().requires_grad_(), r.detach().double().requires_grad_()
    wr = w.detach().double().requires_grad_()
    hr = xr + rr
    yr = ref_rms_norm(hr, 1, wr if affine else None, 1e-5)
    outs_r = (yr, hr) if fused else (yr,)
    grads_r = torch.autograd.grad(
        outs_r, [xr, rr, wr] if affine else [xr, rr], (gy.double(), gh.double())[: len(outs_r)]
    )
    tol = 1e-10 if dtype == torch.float64 else 3e-2
    for a, b in zip(results[1][len(outs_r) :], grads_r, strict=True):
        assert_close_to_f64(a, b, rtol=tol, atol=tol * 10)


def test_half_input_saves_half_input_and_fp32_rstd(seed):
    x = torch.randn(6, 32, generator=seed).to(torch.bfloat16).requires_grad_()
    y = tn.RMSNorm(32).to(torch.bfloat16)(x)
    dtypes = sorted(str(t.dtype) for t in y.grad_fn.saved_tensors if t is not None)
    assert dtypes == ["torch.bfloat16", "torch.bfloat16", "torch.float32"]  # x, weight, rstd
