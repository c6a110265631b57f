"""Every dropout layer on CUDA (fp32/bf16/fp16) against torch's, without host syncs.

Marked ``cuda`` by this folder's conftest and skipped without a CUDA device.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import traintech.dropout as D
from _cuda_sync import no_host_sync
from traintech.dropout import _kernel

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
P = 0.3
# name -> (factory(generator) -> layer, torch namesake factory or None, input shape)
LAYERS: dict[str, tuple[Callable[..., nn.Module], Callable[[], nn.Module] | None, tuple]] = {
    "Dropout": (lambda g: D.Dropout(P, generator=g), lambda: nn.Dropout(P), (64, 256, 64)),
    "Dropout-low_memory": (
        lambda g: D.Dropout(P, generator=g, low_memory=True),
        lambda: nn.Dropout(P),
        (64, 256, 64),
    ),
    "Dropout1d": (lambda g: D.Dropout1d(P, generator=g), lambda: nn.Dropout1d(P), (64, 256, 16)),
    "Dropout2d": (
        lambda g: D.Dropout2d(P, generator=g),
        lambda: nn.Dropout2d(P),
        (64, 256, 4, 4),
    ),
    "Dropout3d": (
        lambda g: D.Dropout3d(P, generator=g),
        lambda: nn.Dropout3d(P),
        (64, 256, 2, 2, 4),
    ),
    "AlphaDropout": (
        lambda g: D.AlphaDropout(P, generator=g),
        lambda: nn.AlphaDropout(P),
        (64, 256, 64),
    ),
    "FeatureAlphaDropout": (
        lambda g: D.FeatureAlphaDropout(P, generator=g),
        lambda: nn.FeatureAlphaDropout(P),
        (64, 256, 4, 4),
    ),
    "DropPath": (lambda g: D.DropPath(P, generator=g), None, (4096, 64)),
    "DropBlock2d": (lambda g: D.DropBlock2d(P, 3, generator=g), None, (32, 64, 16, 16)),
}


def _x(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    # positive inputs: an output element is 0 exactly where it was dropped
    return torch.rand(shape, device="cuda").add_(0.5).to(dtype).requires_grad_()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "name", sorted(k for k, v in LAYERS.items() if v[1] is not None and "low_memory" not in k)
)
def test_same_as_torch_without_generator(name: str, dtype: torch.dtype) -> None:
    make, torch_make, shape = LAYERS[name]
    ours, ref = make(None), torch_make()  # type: ignore[misc]
    x = _x(shape, dtype)
    outs = []
    for m in (ours, ref):
        torch.manual_seed(0)
        with no_host_sync():
            y = m(x)
            (g,) = torch.autograd.grad(y.float().sum(), x)
        outs.append((y, g))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=0, atol=0)
    assert torch.equal(ours.eval()(x), x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_with_generator_mask_scale_and_statistics(name: str, dtype: torch.dtype) -> None:
    make, _, shape = LAYERS[name]
    gen = torch.Generator(device="cuda").manual_seed(0)
    layer = make(gen)
    x = _x(shape, dtype)
    with no_host_sync():
        y = layer(x)
        (g,) = torch.autograd.grad(y.float().sum(), x)
    if "Alpha" in name:
        # alpha dropout: kept units are a*x + b, dropped ones the constant a*alpha' + b
        alpha_p = -1.7580993408473766
        a = 1.0 / ((1 - P) * (1 + P * alpha_p**2)) ** 0.5
        b = -a * P * alpha_p
        dropped = (y.float() - (a * alpha_p + b)).abs() < 1e-2
        kept = ~dropped
        torch.testing.assert_close(y.float()[kept], (a * x.float() + b)[kept], rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(g.float(), kept.float() * a, rtol=1e-2, atol=1e-2)
        frac = dropped.float().mean().item()
    else:
        keep = (y != 0).to(dtype)
        if name == "DropBlock2d":
            scale = keep.numel() / keep.float().sum()
        else:
            scale = torch.tensor(1 / (1 - P), device="cuda")
        torch.testing.assert_close(
            y.float(),
            (x * keep).float() * scale,
            rtol=1e-2 if dtype != torch.float32 else 1e-6,
            atol=0,
        )
        torch.testing.assert_close(
            g.float(), (keep.float() * scale), rtol=1e-2 if dtype != torch.float32 else 1e-6, atol=0
        )
        frac = 1 - keep.float().mean().item()
    n_units = {"Dropout1d": 64 * 256, "Dropout2d": 64 * 256, "Dropout3d": 64 * 256}.get(
        name, 4096 if name == "DropPath" else None
    )
    if "Feature" in name:
        n_units = 64 * 256
    tolerance = 0.02 if name == "DropBlock2d" else 5 * (P * (1 - P) / (n_units or x.numel())) ** 0.5
    assert abs(frac - P) < tolerance
    assert torch.equal(layer.eval()(x), x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_drop_connect_on_cuda(dtype: torch.dtype) -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    inner = nn.Linear(512, 512, bias=False).cuda().to(dtype)
    layer = D.DropConnect(inner, P, generator=gen)
    x = torch.randn(8, 512, device="cuda", dtype=dtype)
    with no_host_sync():
        y = layer(x)
        y.float().sum().backward()
    gen.manual_seed(0)
    masked = D.functional.drop_connect(inner.weight.detach(), P, True, generator=gen)
    torch.testing.assert_close(y, x @ masked.t())
    gen.manual_seed(0)  # the same draw on ones: the mask itself (a weight may round to 0)
    ones = torch.ones_like(inner.weight.detach())
    keep = (D.functional.drop_connect(ones, P, True, generator=gen) != 0).to(dtype)
    assert abs(1 - keep.float().mean().item() - P) < 0.01
    assert inner.weight.grad is not None
    # d(sum y)/dW[i, j] = sum_n x[n, j] * keep[i, j] / (1 - p)
    expected = x.float().sum(0).unsqueeze(0).expand(512, 512) * keep.float() / (1 - P)
    torch.testing.assert_close(inner.weight.grad.float(), expected, rtol=2e-2, atol=2e-2)


def test_cuda_dropout_runs_torch_op_not_the_cpu_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the CPU bit-sliced kernel ran on a CUDA tensor")

    monkeypatch.setattr(_kernel, "fast_dropout", refuse)
    import traintech.dropout.functional as F

    monkeypatch.setattr(F, "fast_dropout", refuse)
    x = torch.randn(1024, 1024, device="cuda", requires_grad=True)
    assert not _kernel.use_fast_path(x)
    y = D.Dropout(0.1)(x)
    assert y.grad_fn is not None and y.grad_fn.name() == "NativeDropoutBackward0"
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        D.Dropout(0.1)(x).sum().backward()
        torch.cuda.synchronize()
    names = " ".join(e.name for e in prof.events())
    assert "traintech" not in names


def test_checkpoint_with_cuda_generator() -> None:
    from torch.utils.checkpoint import checkpoint

    def run(use_ckpt: bool) -> torch.Tensor:
        gen = torch.Generator(device="cuda").manual_seed(4)
        layer = D.Dropout(P, generator=gen)
        x = torch.randn(64, 64, device="cuda", requires_grad=True)
        f = lambda t: layer(t.sin()).cos()  # noqa: E731
        out = checkpoint(f, x, use_reentrant=False) if use_ckpt else f(x)
        out.sum().backward()
        assert x.grad is not None
        return x.grad

    torch.manual_seed(0)
    a = run(False)
    torch.manual_seed(0)
    b = run(True)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_default_cuda_generator_is_found() -> None:
    from traintech.dropout._checks import resolve_generator

    assert (
        resolve_generator(torch.device("cuda"), None)
        is torch.cuda.default_generators[torch.cuda.current_device()]
    )
