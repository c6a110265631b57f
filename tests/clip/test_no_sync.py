"""What keeps clipping free of host syncs and on the fast kernels, checked on CPU.

The CUDA side (sync debug mode, kernel counts) is in ``tests/gpu/test_clip.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from traintech._compat import state_dtype
from traintech.clip._functional import clip_coefficient, coef_for, host_coefficient


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("max_norm", [1.0, 0.25, 3.7, 1e-3, 1e6])
def test_host_coefficient_has_the_bits_of_the_tensor_formula(dtype, max_norm, seed):
    # The CPU fast path computes torch's clamp(max_norm / (norm + 1e-6), max=1) in Python; it
    # must give exactly the coefficient the tensor formula (torch's own) gives.
    mantissa = torch.rand(3000, generator=seed, dtype=torch.float64)
    exponent = torch.randint(-12, 12, (3000,), generator=seed).to(torch.float64)
    values = torch.cat(
        [(mantissa * 10**exponent).to(dtype), torch.tensor([0.0, math.inf, math.nan], dtype=dtype)]
    )
    for value in values:
        expected = clip_coefficient(value, max_norm).item()
        got = host_coefficient(value, max_norm)
        assert got == expected or (math.isnan(got) and math.isnan(expected)), (value, got)


def test_coef_for_keeps_precision_on_cpu_and_matches_the_gradients_dtype_elsewhere():
    coef = torch.tensor(5.27e-7)
    assert coef_for(coef, torch.device("cpu"), torch.float16).dtype == torch.float32
    moved = coef_for(coef, torch.device("meta"), torch.bfloat16)
    assert moved.device.type == "meta" and moved.dtype == torch.bfloat16


def test_state_dtype_is_float32_only_where_float64_is_missing():
    assert state_dtype(torch.device("cpu")) == torch.float64
    assert state_dtype("cuda") == torch.float64
    assert state_dtype(torch.device("mps")) == torch.float32


def test_fp16_gradients_keep_a_tiny_coefficient_on_cpu():
    # 1 / (60000 * sqrt(1000)) is subnormal in fp16; the CPU multiply keeps it in float32.
    from traintech.clip import clip_grad_norm_

    w = torch.zeros(1000, dtype=torch.float16, requires_grad=True)
    w.grad = torch.full((1000,), 60000.0, dtype=torch.float16)
    total = clip_grad_norm_([w], 1.0)
    expected = (60000.0 * (1.0 / (total.double() + 1e-6))).item()
    assert w.grad[0].item() == pytest.approx(expected, rel=1e-3)


def test_dtensor_checks_stay_cheap_once_dtensor_is_imported():
    # torch.testing, Lightning and transformers import torch.distributed.tensor; plain gradients
    # are then recognised by their exact type, without an isinstance check against DTensor.
    import torch.distributed.tensor  # noqa: F401

    from traintech._distributed import any_dtensor, is_dtensor, local_tensors

    class Sub(torch.Tensor):
        pass

    plain = [torch.zeros(2), torch.ones(3)]
    assert not any_dtensor(plain) and not is_dtensor(plain[0])
    assert not any_dtensor([torch.zeros(1).as_subclass(Sub)])
    assert all(a is b for a, b in zip(local_tensors(plain), plain, strict=True))
