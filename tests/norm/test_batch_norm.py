"""BatchNorm against a float64 reference written from the formula."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import traintech.norm as tn
import traintech.norm.functional as F

from _helpers import assert_close_to_f64


def ref_batch_norm(x, weight, bias, eps):
    """Per-channel batch statistics over every dim but 1, biased variance (float64)."""
    x = x.double()
    dims = [d for d in range(x.dim()) if d != 1]
    view = [1, -1] + [1] * (x.dim() - 2)
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight.double().view(view)
    if bias is not None:
        y = y + bias.double().view(view)
    return y


def ref_batch_stats(x):
    x = x.double()
    dims = [d for d in range(x.dim()) if d != 1]
    n = x.numel() // x.shape[1]
    mean = x.mean(dims)
    var_unbiased = ((x - mean.view([1, -1] + [1] * (x.dim() - 2))) ** 2).sum(dims) / (n - 1)
    return mean, var_unbiased


SHAPES = [(tn.BatchNorm1d, (7, 4)), (tn.BatchNorm1d, (3, 4, 5)), (tn.BatchNorm2d, (3, 4, 5, 2)),
          (tn.BatchNorm3d, (2, 4, 3, 2, 3))]  # fmt: skip


@pytest.mark.parametrize(("cls", "shape"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_training_forward_and_gradients_match_float64_reference(cls, shape, dtype, seed):
    bn = cls(4, eps=1e-3).to(dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(4, generator=seed))
        bn.bias.copy_(torch.randn(4, generator=seed))
    x = (torch.randn(shape, generator=seed) * 3 + 1).to(dtype).requires_grad_()
    y = bn(x)
    xr = x.detach().double().requires_grad_()
    wr = bn.weight.detach().double().requires_grad_()
    br = bn.bias.detach().double().requires_grad_()
    yr = ref_batch_norm(xr, wr, br, 1e-3)
    # bf16: the output is rounded once and torch's kernel folds (scale, shift) per channel, so
    # the error is a bf16 ulp of the largest term (|x| * scale ~ 4), not of the output.
    fwd_tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1.6e-2}[dtype]
    assert_close_to_f64(y, yr, rtol=fwd_tol, atol=fwd_tol)
    g = torch.randn(shape, generator=seed)
    y.backward(g.to(dtype))
    yr.backward(g.double())
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 5e-2}[dtype]
    assert_close_to_f64(x.grad, xr.grad, rtol=tol, atol=tol)
    assert_close_to_f64(bn.weight.grad, wr.grad, rtol=tol, atol=tol * 10)
    assert_close_to_f64(bn.bias.grad, br.grad, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("momentum", [0.1, 0.5, 1.0, 0.0, None])
def test_running_stats_follow_the_update_rule_over_steps(momentum, seed):
    bn = tn.BatchNorm2d(3, momentum=momentum).double()
    mean_ref = torch.zeros(3, dtype=torch.float64)
    var_ref = torch.ones(3, dtype=torch.float64)
    for step in range(1, 5):
        x = torch.randn(4, 3, 2, 5, generator=seed, dtype=torch.float64) * step + step
        bn(x)
        m, v = ref_batch_stats(x)
        f = 1.0 / step if momentum is None else momentum
        mean_ref = (1 - f) * mean_ref + f * m
        var_ref = (1 - f) * var_ref + f * v
        assert int(bn.num_batches_tracked) == step
        assert_close_to_f64(bn.running_mean, mean_ref)
        assert_close_to_f64(bn.running_var, var_ref)


def test_cumulative_average_equals_plain_mean_of_batch_statistics(seed):
    bn = tn.BatchNorm1d(2, momentum=None).double()
    xs = [torch.randn(6, 2, generator=seed, dtype=torch.float64) * (i + 1) for i in range(5)]
    for x in xs:
        bn(x)
    stats = [ref_batch_stats(x) for x in xs]
    assert_close_to_f64(bn.running_mean, torch.stack([m for m, _ in stats]).mean(0))
    assert_close_to_f64(bn.running_var, torch.stack([v for _, v in stats]).mean(0))


def test_eval_uses_running_statistics(seed):
    bn = tn.BatchNorm2d(3).double()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
        bn.weight.copy_(torch.tensor([2.0, 1.0, -1.0]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, 3.0]))
    bn.eval()
    x = torch.randn(2, 3, 4, 4, generator=seed, dtype=torch.float64)
    view = (1, 3, 1, 1)
    ref = (x - bn.running_mean.view(view)) / torch.sqrt(bn.running_var.view(view) + 1e-5)
    ref = ref * bn.weight.detach().view(view) + bn.bias.detach().view(view)
    before = bn.running_mean.clone()
    assert_close_to_f64(bn(x), ref)
    assert torch.equal(bn.running_mean, before)
    assert int(bn.num_batches_tracked) == 0


def test_without_running_stats_eval_uses_batch_statistics(seed):
    bn = tn.BatchNorm1d(3, track_running_stats=False, affine=False).double().eval()
    x = torch.randn(5, 3, generator=seed, dtype=torch.float64)
    assert bn.running_mean is None and bn.num_batches_tracked is None
    assert_close_to_f64(bn(x), ref_batch_norm(x, None, None, 1e-5))


def test_one_value_per_channel_in_training_raises_like_torch():
    for layer in (tn.BatchNorm1d(3), nn.BatchNorm1d(3)):
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            layer(torch.randn(1, 3))
    bn = tn.BatchNorm1d(3)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        bn(torch.randn(1, 3))
    assert int(bn.num_batches_tracked) == 0  # raised before any state changed
    bn.eval()
    bn(torch.randn(1, 3))  # fine in eval


def test_version_1_checkpoint_without_num_batches_tracked_loads(seed):
    src = nn.BatchNorm2d(4)
    src.running_mean.normal_(generator=seed)
    sd = src.state_dict()
    del sd["num_batches_tracked"]
    sd._metadata[""]["version"] = 1
    bn = tn.BatchNorm2d(4)
    bn.num_batches_tracked.fill_(7)
    bn.load_state_dict(sd, strict=True)
    assert torch.equal(bn.running_mean, src.running_mean)
    assert int(bn.num_batches_tracked) == 7  # kept, as torch keeps its own
    fresh = tn.BatchNorm2d(4)
    del sd._metadata[""]["version"]
    fresh.load_state_dict(sd, strict=True)
    assert int(fresh.num_batches_tracked) == 0
    sd2 = src.state_dict()
    del sd2["num_batches_tracked"]  # version 2 without the key: strict load must fail
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        tn.BatchNorm2d(4).load_state_dict(sd2, strict=True)


def test_functional_matches_module_and_updates_buffers(seed):
    x = torch.randn(6, 3, 4, generator=seed)
    rm, rv = torch.zeros(3), torch.ones(3)
    y = F.batch_norm(x, rm, rv, training=True, momentum=0.2)
    assert_close_to_f64(y, ref_batch_norm(x, None, None, 1e-5), rtol=1e-5, atol=1e-5)
    m, v = ref_batch_stats(x)
    assert_close_to_f64(rm, 0.2 * m, rtol=1e-5, atol=1e-6)
    assert_close_to_f64(rv, 0.8 + 0.2 * v, rtol=1e-5, atol=1e-6)


def test_reset_parameters_restores_defaults(seed):
    bn = tn.BatchNorm2d(3)
    bn(torch.randn(4, 3, 2, 2, generator=seed))
    with torch.no_grad():
        bn.weight.mul_(3)
    bn.reset_parameters()
    assert torch.equal(bn.weight, torch.ones(3))
    assert torch.equal(bn.running_mean, torch.zeros(3))
    assert torch.equal(bn.running_var, torch.ones(3))
    assert int(bn.num_batches_tracked) == 0


@pytest.mark.parametrize("cls", [tn.BatchNorm2d, tn.GhostBatchNorm])
def test_resume_from_state_dict_continues_bit_for_bit(cls, seed):
    a = cls(3, momentum=None)
    xs = [torch.randn(6, 3, 2, 2, generator=seed) for _ in range(6)]
    for x in xs[:3]:
        a(x)
    b = cls(3, momentum=None)
    b.load_state_dict(a.state_dict())
    for x in xs[3:]:
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), k


def test_ghost_batch_norm_bf16_statistics_in_fp32(seed):
    gbn = tn.GhostBatchNorm(3, virtual_batch_size=4).to(torch.bfloat16)
    x = torch.randn(8, 3, 5, generator=seed) * 4 + 100  # large mean: bf16 stats would be poor
    y = gbn(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    ref = torch.cat([ref_batch_norm(c, None, None, 1e-5) for c in x.to(torch.bfloat16).split(4)])
    assert_close_to_f64(y, ref, dtype=torch.bfloat16, atol=3e-2)
