"""The shared fast-path gate ``traintech._dispatch.plain_eager_cpu`` and the families' additions.

Each case excluded by the gate is checked on its own, next to a plain tensor that passes, so a
False cannot come from some other condition.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch import nn
from torch.autograd import forward_ad
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from traintech._dispatch import plain_eager_cpu
from traintech.dropout import _kernel
from traintech.norm import _rms_norm


class _Sub(torch.Tensor):
    pass


class _NoopDispatch(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        return func(*args, **(kwargs or {}))


class _NoopFunction(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        return func(*args, **(kwargs or {}))


def test_plain_cpu_tensors_pass() -> None:
    x = torch.randn(4, 6)
    assert plain_eager_cpu(x)
    assert plain_eager_cpu(x, nn.Parameter(torch.ones(6)), None)
    assert plain_eager_cpu(nn.Parameter(x))
    with torch.device("cpu"):  # torch's always-on device context is not a tracer
        assert plain_eager_cpu(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast is family-specific (norm)
        assert plain_eager_cpu(x)


@pytest.mark.parametrize(
    "make",
    [
        lambda x: None,
        lambda x: x.as_subclass(_Sub),
        lambda x: x.to("meta"),
        lambda x: x.to_sparse(),
        lambda x: "not a tensor",
    ],
    ids=["no_tensor", "subclass", "meta", "sparse", "not_a_tensor"],
)
def test_tensors_that_are_not_plain_dense_cpu_fail(make) -> None:  # type: ignore[no-untyped-def]
    x = torch.randn(4, 6)
    other = make(x)
    assert not plain_eager_cpu(other)
    if other is not None:  # one bad tensor among plain ones is enough
        assert not plain_eager_cpu(x, other)


def test_fake_tensor_fails() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    fake = mode.from_tensor(torch.randn(4, 6))
    assert not plain_eager_cpu(fake)


@pytest.mark.parametrize("probe", ["torch.compiler.is_compiling", "torch.jit.is_scripting"])
def test_compile_and_scripting_fail(probe: str) -> None:
    x = torch.randn(4, 6)
    with mock.patch(probe, return_value=True):
        assert not plain_eager_cpu(x)
    assert plain_eager_cpu(x)


def test_jit_tracing_fails() -> None:
    seen: list[bool] = []

    def f(t: torch.Tensor) -> torch.Tensor:
        seen.append(plain_eager_cpu(t))
        return t * 2

    torch.jit.trace(f, torch.randn(3), check_trace=False)
    assert seen == [False]


def test_functorch_transforms_fail_for_wrapped_and_captured_tensors() -> None:
    x, captured = torch.randn(2, 3), torch.randn(3)
    seen: list[bool] = []
    torch.func.vmap(lambda t: seen.append(plain_eager_cpu(t)) or t)(x)
    torch.func.vmap(lambda t: seen.append(plain_eager_cpu(captured)) or t)(x)
    torch.func.grad(lambda t: seen.append(plain_eager_cpu(t)) or t.sum())(captured)
    assert seen == [False, False, False]


def test_forward_ad_fails_for_dual_and_plain_tensors() -> None:
    x = torch.randn(4, 6)
    with forward_ad.dual_level():
        assert not plain_eager_cpu(forward_ad.make_dual(x, torch.ones_like(x)))
        assert not plain_eager_cpu(x)
    assert plain_eager_cpu(x)


def test_fx_symbolic_tracing_fails() -> None:
    constant = torch.randn(3)
    seen: list[bool] = []

    def f(t: torch.Tensor) -> torch.Tensor:
        seen.append(plain_eager_cpu(constant))
        return t + 1

    torch.fx.symbolic_trace(f)
    assert seen == [False]


@pytest.mark.parametrize("mode", [_NoopDispatch, _NoopFunction], ids=["dispatch", "function"])
def test_dispatch_and_function_modes_fail(mode: type) -> None:
    x = torch.randn(4, 6)
    with mode():
        assert not plain_eager_cpu(x)
    assert plain_eager_cpu(x)


def test_norm_adds_dtype_match_non_empty_and_autocast() -> None:
    x, w = torch.randn(4, 6), torch.ones(6)
    assert _rms_norm.use_fast_path(x, w)
    assert _rms_norm.use_fast_path(x, None)
    assert not _rms_norm.use_fast_path(x.to(torch.int32), None)
    assert not _rms_norm.use_fast_path(x, w.double())
    assert not _rms_norm.use_fast_path(torch.randn(0, 6), None)
    assert not _rms_norm.use_fast_path(None, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _rms_norm.use_fast_path(x, w)
    with _NoopDispatch():  # from the shared gate: norm now also refuses dispatch modes
        assert not _rms_norm.use_fast_path(x, w)


def test_dropout_adds_size_contiguity_and_dtype_but_not_autocast() -> None:
    x = torch.randn(256, 1024)
    assert _kernel.use_fast_path(x)
    assert not _kernel.use_fast_path(x.t())  # non-contiguous
    assert not _kernel.use_fast_path(torch.randn(16, 16))
    assert not _kernel.use_fast_path(x.to(torch.int32))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # torch's dropout ignores autocast
        assert _kernel.use_fast_path(x)
    with mock.patch("torch.jit.is_scripting", return_value=True):  # from the shared gate
        assert not _kernel.use_fast_path(x)
