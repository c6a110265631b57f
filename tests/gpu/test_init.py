"""traintech.init on CUDA: torch parity with a CUDA generator, device checks, init_model on GPU."""

import math

import pytest
import torch
from torch import nn

import traintech.init as ti

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _cuda_gen(seed):
    return torch.Generator(device="cuda").manual_seed(seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("ours", "theirs", "kwargs"),
    [
        (ti.uniform_, nn.init.uniform_, {"a": -0.5, "b": 0.25}),
        (ti.normal_, nn.init.normal_, {"mean": 0.1, "std": 0.02}),
        (ti.xavier_uniform_, nn.init.xavier_uniform_, {}),
        (ti.xavier_normal_, nn.init.xavier_normal_, {"gain": 1.3}),
        (ti.kaiming_uniform_, nn.init.kaiming_uniform_, {"a": 0.1}),
        (ti.kaiming_normal_, nn.init.kaiming_normal_, {"mode": "fan_out"}),
        (ti.trunc_normal_, nn.init.trunc_normal_, {"std": 0.5}),
    ],
)
def test_random_inits_equal_torch_on_cuda(ours, theirs, kwargs, dtype):
    a = torch.empty(96, 64, device="cuda", dtype=dtype)
    b = torch.empty(96, 64, device="cuda", dtype=dtype)
    ours(a, generator=_cuda_gen(3), **kwargs)
    theirs(b, generator=_cuda_gen(3), **kwargs)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_deterministic_fills_equal_torch_on_cuda(dtype):
    for ours, theirs, shape, args in [
        (ti.eye_, nn.init.eye_, (5, 7), ()),
        (ti.dirac_, nn.init.dirac_, (8, 4, 3, 3), (2,)),
        (ti.constant_, nn.init.constant_, (4, 4), (0.5,)),
        (ti.ones_, nn.init.ones_, (4, 4), ()),
        (ti.zeros_, nn.init.zeros_, (4, 4), ()),
    ]:
        a = torch.full(shape, 9.0, device="cuda", dtype=dtype)
        b = torch.full(shape, 9.0, device="cuda", dtype=dtype)
        ours(a, *args)
        theirs(b, *args)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_sparse_on_cuda_with_a_cuda_generator_matches_its_reference_and_spares_global_rngs():
    cpu_state, cuda_state = torch.get_rng_state(), torch.cuda.get_rng_state()
    got = ti.sparse_(torch.empty(40, 12, device="cuda"), 0.25, 0.1, _cuda_gen(5))
    assert torch.equal(torch.get_rng_state(), cpu_state)
    assert torch.equal(torch.cuda.get_rng_state(), cuda_state)
    gen = _cuda_gen(5)
    ref = torch.empty(40, 12, device="cuda").normal_(0, 0.1, generator=gen)
    for col in range(12):
        perm = torch.randperm(40, generator=gen, device="cuda")
        ref[perm[:10], col] = 0
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_a_cpu_generator_for_a_cuda_tensor_is_refused_before_writing():
    t = torch.full((4, 4), 7.0, device="cuda")
    for call in (
        lambda: ti.uniform_(t, generator=torch.Generator()),
        lambda: ti.kaiming_normal_(t, generator=torch.Generator()),
        lambda: ti.sparse_(t, 0.5, generator=torch.Generator()),
    ):
        with pytest.raises(ValueError, match="generator is on cpu"):
            call()
    assert torch.equal(t, torch.full((4, 4), 7.0, device="cuda"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_init_model_on_cuda_reaches_the_target_std_and_keeps_dtype(dtype):
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 128), nn.LayerNorm(128))
    model = model.to(device="cuda", dtype=dtype)
    report = ti.init_model(model, generator=_cuda_gen(0))
    w = model[0].weight
    assert w.dtype == dtype and w.is_cuda
    assert report["0.weight"].std == pytest.approx(math.sqrt(2 / 256))
    assert w.float().std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.05)
    again = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 128), nn.LayerNorm(128))
    again = again.to(device="cuda", dtype=dtype)
    ti.init_model(again, generator=_cuda_gen(0))
    for p, q in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)


def test_meta_plan_then_cuda_materialisation():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 8))
    assert not ti.init_model(model).materialized
    model.to_empty(device="cuda")
    report = ti.init_model(model, generator=_cuda_gen(1))
    assert report.materialized
    assert torch.isfinite(model[0].weight).all()
    assert torch.equal(model[0].bias, torch.zeros(64, device="cuda"))
