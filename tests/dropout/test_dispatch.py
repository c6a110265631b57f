"""Dispatch: the bit-sliced kernel on plain CPU tensors only, torch's ops everywhere else.

Checked against torch itself: with ``generator=None`` off the fast path our layers run torch's
op, so under the same seed they give torch's exact output (eagerly, under ``torch.func`` and
with DTensor); with a generator, against the float64 formula ``x * keep / (1 - p)``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd import forward_ad

import traintech.dropout as D
from traintech.dropout import _kernel
from traintech.dropout import functional as F
from traintech.dropout._checks import resolve_generator

LARGE = (256, 1024)  # 2**18 elements: above FAST_MIN_NUMEL

# Our layer and torch's namesake, and an input shape each accepts.
PAIRS = {
    "Dropout": (D.Dropout, nn.Dropout, (4, 5, 6)),
    "Dropout1d": (D.Dropout1d, nn.Dropout1d, (4, 5, 6)),
    "Dropout2d": (D.Dropout2d, nn.Dropout2d, (4, 5, 6, 3)),
    "Dropout3d": (D.Dropout3d, nn.Dropout3d, (4, 5, 2, 3, 3)),
    "AlphaDropout": (D.AlphaDropout, nn.AlphaDropout, (4, 5, 6)),
    "FeatureAlphaDropout": (D.FeatureAlphaDropout, nn.FeatureAlphaDropout, (4, 5, 6)),
}


def _same_seed(fn_a, fn_b, seed: int = 0):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    a = fn_a()
    torch.manual_seed(seed)
    b = fn_b()
    return a, b


def test_fast_path_gate() -> None:
    x = torch.randn(LARGE)
    assert _kernel.use_fast_path(x)
    assert _kernel.use_fast_path(nn.Parameter(x))
    assert not _kernel.use_fast_path(torch.randn(16, 16))  # small
    assert not _kernel.use_fast_path(x.t())  # non-contiguous
    assert not _kernel.use_fast_path(x.to("meta"))
    assert not _kernel.use_fast_path(x.to(torch.int32))
    with forward_ad.dual_level():
        assert not _kernel.use_fast_path(forward_ad.make_dual(x, torch.ones_like(x)))
    seen: list[bool] = []
    torch.func.vmap(lambda t: seen.append(_kernel.use_fast_path(t)) or t)(x.unsqueeze(0))
    torch.func.grad(lambda t: seen.append(_kernel.use_fast_path(t)) or t.sum())(x)
    assert seen == [False, False]
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        assert not _kernel.use_fast_path(mode.from_tensor(x))


def test_fast_path_runs_the_custom_op(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = torch.nn.functional.dropout
    monkeypatch.setattr(
        torch.nn.functional, "dropout", lambda *a, **k: calls.append("torch") or real(*a, **k)
    )
    x = torch.randn(LARGE, requires_grad=True)
    y = F.dropout(x, 0.1, True)
    assert calls == [] and y.grad_fn is not None and "bit_dropout" in y.grad_fn.name()
    F.dropout(torch.randn(8, 8), 0.1, True)
    assert calls == ["torch"]


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_same_as_torch_module_without_generator(name: str) -> None:
    ours_cls, torch_cls, shape = PAIRS[name]
    ours, ref = ours_cls(0.3), torch_cls(0.3)
    assert isinstance(ours, torch_cls)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    a, b = _same_seed(lambda: ours(x), lambda: ref(x))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    ga, gb = (torch.autograd.grad(t.sum(), x)[0] for t in (a, b))
    torch.testing.assert_close(ga, gb, rtol=0, atol=0)
    assert torch.equal(ours.eval()(x), ref.eval()(x))


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_subclass_contract(name: str) -> None:
    ours_cls, torch_cls, _ = PAIRS[name]
    for args in ((), (0.2,), (0.2, True)):
        ours, ref = ours_cls(*args), torch_cls(*args)
        assert isinstance(ours, torch_cls)
        assert ours.extra_repr() == ref.extra_repr()
        assert dict(ours.state_dict()) == {} == dict(ref.state_dict())
        assert (ours.p, ours.inplace) == (ref.p, ref.inplace)


@pytest.mark.parametrize("cls", [D.AlphaDropout, D.FeatureAlphaDropout])
def test_alpha_modules_ignore_inplace_like_torch(cls: type[nn.Module]) -> None:
    torch_cls = nn.AlphaDropout if cls is D.AlphaDropout else nn.FeatureAlphaDropout
    x = torch.randn(4, 5, 6)
    xa, xb = x.clone(), x.clone()
    a, b = _same_seed(lambda: cls(0.3, inplace=True)(xa), lambda: torch_cls(0.3, True)(xb))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(xa, x) and torch.equal(xb, x)  # neither overwrote its input
    g = torch.Generator().manual_seed(0)
    xg = x.clone()
    cls(0.3, inplace=True, generator=g)(xg)
    assert torch.equal(xg, x)


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("shape", [(8, 8), LARGE], ids=["torch-path", "fast-path"])
def test_generator_path_matches_formula(p: float, shape: tuple[int, ...]) -> None:
    x = torch.rand(shape, dtype=torch.float64).add_(0.5).requires_grad_()
    y = F.dropout(x, p, True, generator=torch.Generator().manual_seed(3))
    keep = (y != 0).double()
    torch.testing.assert_close(y, x.detach() * keep / (1 - p), rtol=1e-15, atol=0)
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, keep / (1 - p), rtol=1e-15, atol=0)


@pytest.mark.parametrize("low_memory", [False, True])
def test_fast_path_double_backward(low_memory: bool) -> None:
    # d/dv <dropout'(x) v, w> = w * keep * scale: the backward is linear, so differentiable.
    p = 0.2
    x = torch.randn(LARGE, dtype=torch.float64, requires_grad=True)
    v = torch.randn(LARGE, dtype=torch.float64, requires_grad=True)
    w = torch.randn(LARGE, dtype=torch.float64)
    y = F.dropout(x, p, True, generator=torch.Generator().manual_seed(0), low_memory=low_memory)
    keep = (y != 0).double() if bool((x != 0).all()) else None
    assert keep is not None
    (gx,) = torch.autograd.grad(y, x, v, create_graph=True)
    torch.testing.assert_close(gx, v * keep / (1 - p), rtol=1e-15, atol=0)
    (gv,) = torch.autograd.grad((gx * w).sum(), v)
    torch.testing.assert_close(gv, w * keep / (1 - p), rtol=1e-15, atol=0)


def test_custom_ops_pass_opcheck() -> None:
    x = torch.randn(3, 70, dtype=torch.float64, requires_grad=True)
    words = _kernel.drop_words(_kernel._n_words(x.numel()), 0.3, 7)
    for op, args in (
        (torch.ops.traintech.bit_dropout.default, (x, 0.3, 1 / 0.7, 7)),
        (torch.ops.traintech.bit_dropout_lowmem.default, (x, 0.3, 1 / 0.7, 7)),
        (torch.ops.traintech.apply_bits.default, (x, words, 1 / 0.7)),
    ):
        torch.library.opcheck(op, args)


def test_apply_bits_vmap_rule() -> None:
    # batched backward (is_grads_batched uses vmap) through the fast path's backward op
    x = torch.randn(LARGE, requires_grad=True)
    y = F.dropout(x, 0.3, True, generator=torch.Generator().manual_seed(0))
    grads = torch.randn(3, *LARGE)
    (g,) = torch.autograd.grad(y, x, grads, is_grads_batched=True)
    keep = (y != 0).float()
    torch.testing.assert_close(g, grads * keep / 0.7)


def test_fast_path_gradgradcheck_of_the_kernel_ops() -> None:
    words = _kernel.drop_words(2, 0.4, 11)
    t = torch.randn(2, 50, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a: _kernel.apply_bits(a, words, 2.0), (t,))
    assert torch.autograd.gradgradcheck(
        lambda a: _kernel.bit_dropout(a, 0.4, 2.0, 5)[0], (t,), check_undefined_grad=False
    )


def test_low_memory_warns_where_torch_saves_the_mask() -> None:
    with forward_ad.dual_level():
        x = forward_ad.make_dual(torch.randn(8, 8), torch.ones(8, 8))
        with pytest.warns(UserWarning, match="low_memory has no effect"):
            F.dropout(x, 0.3, True, low_memory=True)


def test_resolve_generator_cpu_and_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_generator(torch.device("cpu"), None) is torch.default_generator
    mine = torch.Generator()
    assert resolve_generator(torch.device("cpu"), mine) is mine
    gens = [torch.Generator(), torch.Generator()]

    class FakeModule:
        default_generators = gens

        @staticmethod
        def current_device() -> int:
            return 1

    monkeypatch.setattr(torch, "get_device_module", lambda device: FakeModule)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: None)
    assert resolve_generator(torch.device("xpu", 0), None) is gens[0]
    assert resolve_generator(torch.device("xpu"), None) is gens[1]  # the current device

    class Bare:
        pass

    monkeypatch.setattr(torch, "get_device_module", lambda device: Bare)
    with pytest.raises(RuntimeError, match="generator=torch.Generator"):
        resolve_generator(torch.device("xpu", 0), None)


def test_resolve_generator_uses_the_current_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    gens = [torch.Generator(), torch.Generator(), torch.Generator()]

    class FakeModule:
        default_generators = gens

    monkeypatch.setattr(torch, "get_device_module", lambda device: FakeModule)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: torch.device("hpu"))
    monkeypatch.setattr(torch.accelerator, "current_device_index", lambda: 2)
    assert resolve_generator(torch.device("hpu"), None) is gens[2]
