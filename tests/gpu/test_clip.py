"""Clipping on CUDA: the same results as torch and the float64 formula, no host sync, and the
multi-tensor fast path for fp16/bf16 gradients.

Every call under test runs inside ``torch.cuda.set_sync_debug_mode("error")``: a ``.item()``,
a ``torch.tensor(python_value, device="cuda")`` copy or any other synchronizing call raises.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from _cuda_sync import no_host_sync
from traintech.clip import (
    AGC,
    EMAClip,
    NormClip,
    QuantileClip,
    ValueClip,
    ZClip,
    clip_grad_norm_,
    clip_grad_norm_per_layer_,
    clip_grad_value_,
    grad_norm,
)

DEVICE = "cuda"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
#: Tolerance on gradients of each dtype (one rounding of the result, plus the coefficient's).
RTOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}
SHAPES = [(64, 32), (32,), (17, 5, 3), (1,), (0,), (1000,)]


def _params(dtype: torch.dtype, seed: int = 0, scale: float = 1.0) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in SHAPES:
        p = nn.Parameter(torch.randn(shape, generator=gen).to(DEVICE, dtype))
        p.grad = (torch.randn(shape, generator=gen) * scale).to(DEVICE, dtype)
        params.append(p)
    return params


def _clone(params: list[nn.Parameter]) -> list[nn.Parameter]:
    out = []
    for p in params:
        q = nn.Parameter(p.detach().clone())
        q.grad = p.grad.clone()
        out.append(q)
    return out


def _f64_norm(grads: list[torch.Tensor], p: float = 2.0) -> torch.Tensor:
    flat = torch.cat([g.detach().double().reshape(-1) for g in grads])
    if flat.numel() == 0:
        return torch.zeros((), dtype=torch.float64)
    return flat.abs().max() if math.isinf(p) else flat.abs().pow(p).sum().pow(1.0 / p)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
@pytest.mark.parametrize("factor", [0.3, 3.0], ids=["clipped", "not-clipped"])
def test_clip_grad_norm_matches_the_formula_and_torch(dtype, norm_type, factor):
    ours = _params(dtype)
    theirs = _clone(ours)
    before = [p.grad.double() for p in ours]
    ref = _f64_norm(before, norm_type)
    max_norm = factor * ref.item()
    with no_host_sync():
        total = clip_grad_norm_(ours, max_norm, norm_type=norm_type)
    assert total.device.type == DEVICE and total.dtype == torch.float32
    torch.testing.assert_close(total.double().cpu(), ref.cpu(), rtol=1e-6, atol=0)
    coef = min(1.0, max_norm / (ref.item() + 1e-6))
    for p, g in zip(ours, before, strict=True):
        torch.testing.assert_close(
            p.grad.double(), (g * coef).to(dtype).double(), rtol=RTOL[dtype], atol=1e-6
        )
    if dtype == torch.float32:  # torch's own fp16/bf16 norm is rounded to the gradients' dtype
        # (torch refuses the inf-norm of an empty tensor; ours counts it as 0)
        nonempty = [q for q in theirs if q.numel() > 0]
        torch.nn.utils.clip_grad_norm_(nonempty, max_norm, norm_type=norm_type)
        for p, q in zip(ours, theirs, strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=RTOL[dtype], atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_norm_and_clip_grad_value_match_torch(dtype):
    ours = _params(dtype, scale=3.0)
    theirs = _clone(ours)
    with no_host_sync():
        norm = grad_norm(ours)
        clip_grad_value_(ours, 1.5)
    torch.testing.assert_close(
        norm.double().cpu(), _f64_norm([q.grad for q in theirs]).cpu(), rtol=1e-6, atol=0
    )
    torch.nn.utils.clip_grad_value_(theirs, 1.5)
    for p, q in zip(ours, theirs, strict=True):
        assert torch.equal(p.grad, q.grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_per_layer_matches_torch_layer_by_layer(dtype, norm_type):
    ours = _params(dtype, scale=2.0)
    named = {f"p{i}": p for i, p in enumerate(ours)}
    theirs = _clone(ours)
    bounds = {name: 0.5 + i for i, name in enumerate(named)}
    with no_host_sync():
        norms = clip_grad_norm_per_layer_(named, bounds, norm_type=norm_type)
    for (name, p), q in zip(named.items(), theirs, strict=True):
        ref = _f64_norm([q.grad], norm_type)
        torch.testing.assert_close(norms[name].double().cpu(), ref.cpu(), rtol=1e-5, atol=1e-6)
        coef = min(1.0, bounds[name] / (ref.item() + 1e-6))
        expected = (q.grad.double() * coef).to(dtype).double()
        torch.testing.assert_close(p.grad.double(), expected, rtol=RTOL[dtype], atol=1e-6)


CLIPPERS: dict[str, Callable[[], object]] = {
    "NormClip": lambda: NormClip(1.0),
    "NormClip-inf": lambda: NormClip(0.5, norm_type=math.inf),
    "ValueClip": lambda: ValueClip(0.5),
    "EMAClip": lambda: EMAClip(),
    "QuantileClip": lambda: QuantileClip(window=8),
    "ZClip": lambda: ZClip(warmup_steps=3),
    "AGC": lambda: AGC(0.01),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CLIPPERS))
def test_every_clipper_runs_without_a_sync_and_agrees_with_cpu(name, dtype):
    # The same clipper on the CPU (where the same rule runs) is the reference: over several
    # steps, including spikes, the CUDA results agree within the dtype's tolerance.
    gpu, cpu = CLIPPERS[name](), CLIPPERS[name]()
    for step in range(6):
        params = _params(dtype, seed=step, scale=10.0 if step in (4, 5) else 1.0)
        twins = [copy.deepcopy(p.detach()).cpu().requires_grad_() for p in params]
        for p, t in zip(params, twins, strict=True):
            t.grad = p.grad.cpu().clone()
        with no_host_sync():
            result = gpu(params)  # type: ignore[operator]
        expected = cpu(twins)  # type: ignore[operator]
        assert result.norm.device.type == DEVICE
        torch.testing.assert_close(
            result.norm.double().cpu(), expected.norm.double(), rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(
            result.coef.double().cpu(), expected.coef.double(), rtol=RTOL[dtype], atol=1e-6
        )
        for p, t in zip(params, twins, strict=True):
            torch.testing.assert_close(
                p.grad.double().cpu(), t.grad.double(), rtol=RTOL[dtype], atol=1e-6
            )


def _kernel_names(fn: Callable[[], object]) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type.name == "CUDA"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_clipping_multiplies_in_multi_tensor_kernels(dtype):
    # 60 tensors: one multi-tensor launch for the multiply (a chunk holds up to 110 tensors),
    # not one elementwise kernel per tensor (what a float32 coefficient on bf16 tensors causes).
    gen = torch.Generator().manual_seed(0)
    params = []
    for _ in range(60):
        p = nn.Parameter(torch.zeros(256, device=DEVICE, dtype=dtype))
        p.grad = torch.randn(256, generator=gen).to(DEVICE, dtype) * 10
        params.append(p)
    clip_grad_norm_(params, 1.0)  # warm-up (lazy CUDA init, allocator)
    names = _kernel_names(lambda: clip_grad_norm_(params, 1.0))
    multi = [n for n in names if "multi_tensor_apply" in n]
    # A few scalar multiplies (the coefficient) are fine; one per gradient tensor is not.
    elementwise_mul = [n for n in names if "elementwise" in n and "Mul" in n]
    assert len(elementwise_mul) <= 3, elementwise_mul[:5]
    assert 2 <= len(multi) <= 6, names  # the norm's and the multiply's multi-tensor launches
    # NormClip's apply goes through the same path.
    names = _kernel_names(lambda: NormClip(1.0)(params))
    assert len([n for n in names if "elementwise" in n and "Mul" in n]) <= 3
