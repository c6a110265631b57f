"""traintech.norm on CUDA: every layer against torch's in fp32/bf16/fp16, without host syncs.

Marked ``cuda`` by this folder's conftest and skipped without a CUDA device. Each layer runs
side by side with its ``torch.nn`` namesake (same parameters and buffers) inside
``torch.cuda.set_sync_debug_mode("error")`` (any host-device synchronization raises), forward and
backward; RMSNorm and the fused add + RMSNorm must run torch's own kernels, never our CPU one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
import torch
from torch import nn

import traintech.norm as tn
import traintech.norm._rms_norm as rms_module
from _cuda_sync import no_host_sync
from _norm_helpers import randomize_norm_state

DEVICE = "cuda"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOL = {
    torch.float32: {"rtol": 1e-4, "atol": 1e-4},
    torch.bfloat16: {"rtol": 4e-2, "atol": 4e-2},
    torch.float16: {"rtol": 5e-3, "atol": 5e-3},
}

#: (id, our factory, torch's factory, input shape)
LAYERS: list[tuple[str, Callable[[], nn.Module], Callable[[], nn.Module], tuple[int, ...]]] = [
    ("bn1d", lambda: tn.BatchNorm1d(8), lambda: nn.BatchNorm1d(8), (16, 8, 5)),
    ("bn2d", lambda: tn.BatchNorm2d(8), lambda: nn.BatchNorm2d(8), (4, 8, 6, 6)),
    ("bn3d", lambda: tn.BatchNorm3d(4), lambda: nn.BatchNorm3d(4), (2, 4, 3, 4, 4)),
    ("sync_bn_single_process", lambda: tn.SyncBatchNorm(8), lambda: nn.BatchNorm2d(8),
     (4, 8, 6, 6)),
    ("ghost_bn_one_chunk", lambda: tn.GhostBatchNorm(8, 64), lambda: nn.BatchNorm2d(8),
     (4, 8, 6, 6)),
    ("ln", lambda: tn.LayerNorm(64), lambda: nn.LayerNorm(64), (4, 10, 64)),
    ("gn", lambda: tn.GroupNorm(4, 8), lambda: nn.GroupNorm(4, 8), (4, 8, 6, 6)),
    ("in1d", lambda: tn.InstanceNorm1d(8, affine=True), lambda: nn.InstanceNorm1d(8, affine=True),
     (4, 8, 12)),
    ("in2d_track", lambda: tn.InstanceNorm2d(8, affine=True, track_running_stats=True),
     lambda: nn.InstanceNorm2d(8, affine=True, track_running_stats=True), (4, 8, 6, 6)),
    ("in3d", lambda: tn.InstanceNorm3d(4), lambda: nn.InstanceNorm3d(4), (2, 4, 3, 4, 4)),
    ("rms", lambda: tn.RMSNorm(64), lambda: nn.RMSNorm(64), (4, 10, 64)),
    ("rms_eps", lambda: tn.RMSNorm(64, eps=1e-6), lambda: nn.RMSNorm(64, eps=1e-6), (4, 10, 64)),
]  # fmt: skip
IDS = [row[0] for row in LAYERS]


def _pair(ours_f: Callable[[], nn.Module], theirs_f: Callable[[], nn.Module],
          dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    theirs = theirs_f()
    randomize_norm_state(theirs, gen)
    ours = ours_f()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours.to(DEVICE, dtype), theirs.to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("name", "ours_f", "theirs_f", "shape"), LAYERS, ids=IDS)
def test_layer_matches_torch_on_cuda_without_host_sync(name, ours_f, theirs_f, shape, dtype):
    ours, theirs = _pair(ours_f, theirs_f, dtype)
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    x = torch.randn(shape, device=DEVICE, generator=gen).to(dtype)
    gy = torch.randn(shape, device=DEVICE, generator=gen).to(dtype)
    for train in (True, False):
        results = []
        for layer in (ours.train(train), theirs.train(train)):
            xi = x.clone().requires_grad_()
            with no_host_sync():
                y = layer(xi)
                y.backward(gy)
            grads = [xi.grad] + [p.grad for p in layer.parameters()]
            results.append((y, grads, [b.clone() for b in layer.buffers()]))
            layer.zero_grad(set_to_none=True)
        assert results[0][0].dtype == dtype
        torch.testing.assert_close(results[0], results[1], **TOL[dtype])


def _op_names(fn: Callable[[], Any]) -> list[str]:
    """Names of the operators (``aten::...``, ``traintech::...``) ``fn`` ran, from the profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
        torch.cuda.synchronize()
    return sorted(e.name for e in prof.events() if "::" in e.name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_norm_on_cuda_runs_torchs_kernel_not_ours(dtype):
    ours, theirs = _pair(lambda: tn.RMSNorm(256), lambda: nn.RMSNorm(256), dtype)
    x = torch.randn(8, 256, device=DEVICE, dtype=dtype, requires_grad=True)
    logs = []
    with mock.patch.object(rms_module, "rms_forward", side_effect=AssertionError("CPU kernel")):
        for layer in (ours, theirs):
            logs.append(_op_names(lambda m=layer: m(x).sum().backward()))
    # exactly torch's ops (its fused rms_norm kernel, forward and backward), none of ours
    assert [n for n in logs[0] if "rms_norm" in n] == [n for n in logs[1] if "rms_norm" in n]
    assert any("rms_norm" in n for n in logs[1])
    assert not any("traintech" in n for n in logs[0])


def test_fused_add_rms_norm_on_cuda_matches_torch_without_host_sync():
    norm = tn.FusedAddRMSNorm(128).to(DEVICE, torch.bfloat16)
    ref = nn.RMSNorm(128).to(DEVICE, torch.bfloat16)
    x = torch.randn(4, 16, 128, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    r = torch.randn(4, 16, 128, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    x2, r2 = (t.detach().clone().requires_grad_() for t in (x, r))
    with mock.patch.object(rms_module, "rms_forward", side_effect=AssertionError("CPU kernel")):
        with no_host_sync():
            y, h = norm(x, r)
            (y.float().square().sum() + h.float().sum()).backward()
            h2 = x2 + r2
            y2 = ref(h2)
            (y2.float().square().sum() + h2.float().sum()).backward()
    torch.testing.assert_close((y, h, x.grad, r.grad), (y2, h2, x2.grad, r2.grad),
                               **TOL[torch.bfloat16])  # fmt: skip


def test_frozen_batchnorm_and_channel_layernorm_on_cuda_without_host_sync():
    bn = nn.BatchNorm2d(8).to(DEVICE).eval()
    frozen = tn.FrozenBatchNorm2d.from_batchnorm(bn)
    cln = tn.ChannelLayerNorm(8).to(DEVICE)
    x = torch.randn(2, 8, 5, 5, device=DEVICE, requires_grad=True)
    with no_host_sync():
        y = frozen(x)
        z = cln(x)
        (y.sum() + z.square().sum()).backward()
    torch.testing.assert_close(y, bn(x), rtol=1e-5, atol=1e-5)
    ref = torch.nn.functional.layer_norm(x.movedim(1, -1), (8,)).movedim(-1, 1)
    torch.testing.assert_close(z, ref, rtol=1e-5, atol=1e-5)


def test_meta_construction_then_to_empty_on_cuda():
    for make in (lambda d: tn.RMSNorm(16, device=d), lambda d: tn.BatchNorm2d(4, device=d)):
        layer = make("meta")
        layer.to_empty(device=DEVICE)
        layer.reset_parameters()
        fresh = make(DEVICE)
        for (k, a), (_, b) in zip(layer.state_dict().items(), fresh.state_dict().items(),
                                  strict=True):  # fmt: skip
            torch.testing.assert_close(a, b, msg=k)
    assert copy.deepcopy(layer).weight.device.type == "cuda"
