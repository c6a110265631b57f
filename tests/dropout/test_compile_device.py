"""torch.compile (graph breaks allowed) and devices other than CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import traintech.dropout as D

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _model() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(16, 16),
        D.Dropout(0.2),
        D.DropPath(0.1),
        D.AlphaDropout(0.1),
        D.DropConnect(nn.Linear(16, 16), 0.2),
    )


@pytest.mark.slow
def test_compiles_with_aot_eager() -> None:
    torch.manual_seed(0)
    model = _model()
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(8, 16, requires_grad=True)
    y = compiled(x)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    compiled.eval()
    torch.testing.assert_close(compiled(x), model.eval()(x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("low_memory", [False, True])
def test_dropout_on_device(device, low_memory) -> None:
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(256, 512, device=device, dtype=torch.float64).add_(0.5).requires_grad_()
    y = D.functional.dropout(x, 0.25, True, generator=gen, low_memory=low_memory)
    y.sum().backward()
    keep = (y != 0).double()
    torch.testing.assert_close(y, x.detach() * keep / 0.75)
    torch.testing.assert_close(x.grad, keep / 0.75)


@pytest.mark.parametrize("device", DEVICES)
def test_layers_on_device(device) -> None:
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(4, 3, 8, 8, device=device)
    for layer in (
        D.Dropout2d(0.5, generator=gen),
        D.DropBlock2d(0.2, 3, generator=gen),
        D.DropPath(0.5, generator=gen),
        D.FeatureAlphaDropout(0.2, generator=gen),
    ):
        y = layer(x)
        assert y.device == x.device and not torch.equal(y, x)
