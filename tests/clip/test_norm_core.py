import math

import pytest
import torch

from traintech.clip._norm import collect_grads, total_norm

from _helpers import assert_close_to_f64


def _reference_norm(grads, p):
    flat = torch.cat([g.detach().double().flatten() for g in grads])
    if math.isinf(p):
        return flat.abs().max()
    return flat.abs().pow(p).sum().pow(1.0 / p)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.5, math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_total_norm_matches_float64_reference(p, dtype, seed):
    grads = [torch.randn(shape, generator=seed).to(dtype) for shape in [(7, 3), (11,), (2, 3, 4)]]
    assert_close_to_f64(total_norm(grads, p), _reference_norm(grads, p), dtype=torch.float32)


def test_fp16_gradients_do_not_overflow_the_norm():
    grads = [torch.full((1000,), 60000.0, dtype=torch.float16)]
    norm = total_norm(grads, 2.0)
    assert torch.isfinite(norm)
    assert_close_to_f64(norm, torch.tensor(60000.0 * math.sqrt(1000)), dtype=torch.float32)


def test_collect_grads_skips_missing_and_rejects_non_tensors():
    a = torch.zeros(3, requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    a.grad = torch.ones(3)
    assert [g.shape for g in collect_grads(iter([a, b]))] == [torch.Size([3])]
    assert len(collect_grads(a)) == 1
    with pytest.raises(TypeError, match=r"parameters\[1\] is a str"):
        collect_grads([a, "w"])


@pytest.mark.parametrize("p", [1.0, 2.0, 3.5, math.inf])
def test_partials_from_shards_combine_to_the_total_norm(p, seed):
    # The distributed seam: each rank reduces its shard to partials; combining them (what an
    # all-reduce SUM/MAX does) and taking the root gives the norm of the whole gradient.
    from traintech.clip._norm import combine_partials, partial_power_sums

    grads = [torch.randn(shape, generator=seed) for shape in [(70, 30), (5000,), (3,), (9, 9)]]
    rank0, rank1 = grads[:2], grads[2:]
    partials = partial_power_sums(rank0, p) + partial_power_sums(rank1, p)
    combined = combine_partials(partials, p, torch.device("cpu"), torch.float32)
    assert_close_to_f64(combined, _reference_norm(grads, p), dtype=torch.float32)
    assert_close_to_f64(total_norm(grads, p), _reference_norm(grads, p), dtype=torch.float32)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.5, math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_empty_gradients_add_nothing(p, dtype, seed):
    full = torch.randn(7, 3, generator=seed).to(dtype)
    empty = torch.zeros(0, dtype=dtype)
    alone = total_norm([empty, empty.reshape(0, 4)], p)
    assert alone.item() == 0.0
    assert_close_to_f64(
        total_norm([empty, full, empty], p), _reference_norm([full], p), dtype=torch.float32
    )
