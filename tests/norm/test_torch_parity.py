"""Every layer against its torch.nn namesake: state_dict both ways, repr, values and gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import traintech.norm as tn
from _norm_helpers import randomize_norm_state


def case(name, cls, args=(), kwargs=None, shape=()):
    """One row: the same constructor call on traintech.norm.<cls> and torch.nn.<cls>."""
    kwargs = kwargs or {}
    return (
        name,
        lambda: getattr(tn, cls)(*args, **kwargs),
        lambda: getattr(nn, cls)(*args, **kwargs),
        shape,
    )


CASES = [
    case("bn1d", "BatchNorm1d", (5,), shape=(6, 5)),
    case("bn1d_cma", "BatchNorm1d", (5,), {"momentum": None}, (4, 5, 7)),
    case("bn2d", "BatchNorm2d", (3,), {"eps": 1e-3, "momentum": 0.3}, (4, 3, 5, 6)),
    case("bn2d_noaffine", "BatchNorm2d", (3,), {"affine": False}, (2, 3, 4, 4)),
    case("bn2d_nobias", "BatchNorm2d", (3,), {"bias": False}, (2, 3, 4, 4)),
    case("bn2d_notrack", "BatchNorm2d", (3,), {"track_running_stats": False}, (2, 3, 4, 4)),
    case("bn3d", "BatchNorm3d", (2,), shape=(2, 2, 3, 4, 3)),
    case("ln", "LayerNorm", (8,), shape=(3, 5, 8)),
    case("ln2", "LayerNorm", ((4, 6),), {"eps": 1e-6, "bias": False}, (3, 4, 6)),
    case("ln_noaffine", "LayerNorm", (8,), {"elementwise_affine": False}, (3, 8)),
    case("gn", "GroupNorm", (3, 6), shape=(2, 6, 5, 4)),
    case("gn_1d", "GroupNorm", (2, 4), {"eps": 1e-3, "affine": False}, (3, 4, 9)),
    case("gn_nobias", "GroupNorm", (2, 4), {"bias": False}, (3, 4, 3, 3)),
    case("in1d", "InstanceNorm1d", (4,), shape=(3, 4, 9)),
    case("in1d_nobatch", "InstanceNorm1d", (4,), {"affine": True}, (4, 9)),
    case("in2d_track", "InstanceNorm2d", (3,), {"affine": True, "track_running_stats": True},
         (2, 3, 5, 5)),
    case("in3d", "InstanceNorm3d", (2,), {"momentum": 0.2, "track_running_stats": True},
         (2, 2, 3, 3, 3)),
    case("rms", "RMSNorm", (8,), shape=(3, 5, 8)),
    case("rms2", "RMSNorm", ((4, 6),), {"eps": 1e-5}, (3, 4, 6)),
    case("rms_noaffine", "RMSNorm", (8,), {"elementwise_affine": False}, (2, 8)),
]
IDS = [c[0] for c in CASES]


def _randomize(module: nn.Module, gen: torch.Generator) -> None:
    randomize_norm_state(module, gen, num_batches_tracked=3)


@pytest.mark.parametrize(("name", "ours", "theirs", "shape"), CASES, ids=IDS)
def test_state_dict_loads_both_ways_strict(name, ours, theirs, shape, seed):
    a, b = ours(), theirs()
    assert list(a.state_dict()) == list(b.state_dict())
    _randomize(b, seed)
    a.load_state_dict(b.state_dict(), strict=True)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), k
    _randomize(a, seed)
    c = theirs()
    c.load_state_dict(a.state_dict(), strict=True)
    for (k, va), (_, vc) in zip(a.state_dict().items(), c.state_dict().items(), strict=True):
        assert torch.equal(va, vc), k
    meta_a, meta_b = a.state_dict()._metadata[""], b.state_dict()._metadata[""]
    assert meta_a.get("version") == meta_b.get("version")


@pytest.mark.parametrize(("name", "ours", "theirs", "shape"), CASES, ids=IDS)
def test_repr_and_attributes_match_torch(name, ours, theirs, shape):
    a, b = ours(), theirs()
    assert a.extra_repr() == b.extra_repr()
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    assert [n for n, _ in a.named_buffers()] == [n for n, _ in b.named_buffers()]
    attrs = ("eps", "momentum", "affine", "track_running_stats", "num_features",
             "normalized_shape", "elementwise_affine", "num_groups", "num_channels")  # fmt: skip
    for attr in attrs:
        assert getattr(a, attr, None) == getattr(b, attr, None), attr


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("name", "ours", "theirs", "shape"), CASES, ids=IDS)
def test_train_then_eval_matches_torch_over_steps(name, ours, theirs, shape, dtype, seed):
    """Three training steps (values, input and parameter gradients, buffers) then eval."""
    b = theirs()
    _randomize(b, seed)
    b = b.to(dtype)
    a = ours().to(dtype)
    a.load_state_dict(b.state_dict())
    rtol, atol = (1e-5, 1e-5) if dtype == torch.float32 else (2e-2, 2e-2)
    for _ in range(3):
        x = (torch.randn(shape, generator=seed) * 2 + 0.5).to(dtype)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = a(xa), b(xb)
        torch.testing.assert_close(ya, yb, rtol=rtol, atol=atol)
        g = torch.randn(shape, generator=seed).to(dtype)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=rtol, atol=atol * 5)
        for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
            torch.testing.assert_close(pa.grad, pb.grad, rtol=rtol, atol=atol * 10, msg=n)
        for (n, ba), (_, bb) in zip(a.named_buffers(), b.named_buffers(), strict=True):
            torch.testing.assert_close(ba, bb, rtol=rtol, atol=atol, msg=n)
    a.eval()
    b.eval()
    x = torch.randn(shape, generator=seed).to(dtype)
    torch.testing.assert_close(a(x), b(x), rtol=rtol, atol=atol)


# (ours, torch, positional args) for the device=/dtype= keywords
FACTORY = [
    (tn.BatchNorm1d, nn.BatchNorm1d, (3,)),
    (tn.BatchNorm2d, nn.BatchNorm2d, (3,)),
    (tn.BatchNorm3d, nn.BatchNorm3d, (3,)),
    (tn.LayerNorm, nn.LayerNorm, ((2, 3),)),
    (tn.GroupNorm, nn.GroupNorm, (2, 4)),
    (tn.InstanceNorm1d, nn.InstanceNorm1d, (3, 1e-5, 0.1, True, True)),
    (tn.InstanceNorm2d, nn.InstanceNorm2d, (3,)),
    (tn.InstanceNorm3d, nn.InstanceNorm3d, (3,)),
    (tn.RMSNorm, nn.RMSNorm, (5,)),
]


@pytest.mark.parametrize(("ours", "theirs", "args"), FACTORY, ids=[f[0].__name__ for f in FACTORY])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_device_and_dtype_keywords(ours, theirs, args, dtype):
    a = ours(*args, device="cpu", dtype=dtype)
    b = theirs(*args, device="cpu", dtype=dtype)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert sa[k].device == sb[k].device, k
        assert torch.equal(sa[k], sb[k]), k


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(2, 5),
    groups=st.integers(1, 3),
    per_group=st.integers(1, 3),
    h=st.integers(1, 4),
    w=st.integers(2, 4),
    which=st.sampled_from(["BatchNorm2d", "GroupNorm", "InstanceNorm2d", "LayerNorm"]),
    seed_=st.integers(0, 1000),
)
def test_random_shapes_train_and_eval_match_torch(n, groups, per_group, h, w, which, seed_):
    c = groups * per_group
    gen = torch.Generator().manual_seed(seed_)
    args = {"BatchNorm2d": (c,), "GroupNorm": (groups, c), "InstanceNorm2d": (c, 1e-5, 0.1, True),
            "LayerNorm": ((c, h, w),)}[which]  # fmt: skip
    ours, theirs = getattr(tn, which)(*args), getattr(nn, which)(*args)
    _randomize(theirs, gen)
    ours.load_state_dict(theirs.state_dict())
    for mode in (True, False):
        ours.train(mode)
        theirs.train(mode)
        x = torch.randn(n, c, h, w, generator=gen) * 3 - 1
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), theirs(xb)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
        g = torch.randn(ya.shape, generator=gen)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-4)
        for pa, pb in zip(ours.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-4)
