"""Cross-cutting checks over every dropout layer: eval identity, generator, repr, state_dict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import traintech.dropout as D

from _helpers import assert_close_to_f64

# (factory(generator) -> module, input shape)
LAYERS = {
    "Dropout": (lambda g: D.Dropout(0.3, generator=g), (4, 5, 6)),
    "Dropout-original": (lambda g: D.Dropout(0.3, mode="original", generator=g), (4, 5, 6)),
    "Dropout-low_memory": (lambda g: D.Dropout(0.3, low_memory=True, generator=g), (128, 1024)),
    "Dropout1d": (lambda g: D.Dropout1d(0.3, generator=g), (4, 5, 6)),
    "Dropout2d": (lambda g: D.Dropout2d(0.3, generator=g), (4, 5, 6, 3)),
    "Dropout3d": (lambda g: D.Dropout3d(0.3, generator=g), (4, 5, 2, 3, 3)),
    "AlphaDropout": (lambda g: D.AlphaDropout(0.3, generator=g), (4, 5, 6)),
    "FeatureAlphaDropout": (lambda g: D.FeatureAlphaDropout(0.3, generator=g), (4, 5, 6)),
    "DropPath": (lambda g: D.DropPath(0.3, generator=g), (16, 5, 6)),
    "DropBlock2d": (lambda g: D.DropBlock2d(0.3, 3, generator=g), (4, 5, 8, 8)),
    "DropConnect": (lambda g: D.DropConnect(nn.Linear(6, 6), 0.3, generator=g), (4, 5, 6)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_eval_is_identity(name: str, seed: torch.Generator) -> None:
    make, shape = LAYERS[name]
    layer = make(seed).eval()
    x = torch.randn(shape, generator=seed)
    if name == "DropConnect":
        expected = nn.functional.linear(x, layer.module.weight, layer.module.bias)
    elif name == "Dropout-original":
        expected = x * 0.7
    else:
        expected = x
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_generator_repeats_and_global_rng_untouched(name: str) -> None:
    make, shape = LAYERS[name]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    outs = []
    for seed in (7, 7, 8):
        torch.manual_seed(123)  # DropConnect's Linear is initialised from the global RNG
        layer = make(torch.Generator().manual_seed(seed)).train()
        before = torch.get_rng_state()
        outs.append(layer(x))
        assert torch.equal(torch.get_rng_state(), before)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert not torch.equal(outs[0], outs[2])  # another seed, another mask


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_extra_repr_names_rate(name: str) -> None:
    layer = LAYERS[name][0](None)
    assert "p=0.3" in layer.extra_repr()


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_state_dict_round_trip(name: str, seed: torch.Generator) -> None:
    layer = LAYERS[name][0](seed)
    copy = LAYERS[name][0](None)
    state = layer.state_dict()
    copy.load_state_dict(state)
    for key, value in copy.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_p_zero_is_identity_in_training(name: str, seed: torch.Generator) -> None:
    make, shape = LAYERS[name]
    layer = make(seed).train()
    layer.p = 0.0
    x = torch.randn(shape, generator=seed)
    if name == "DropConnect":
        expected = nn.functional.linear(x, layer.module.weight, layer.module.bias)
    else:
        expected = x
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


def test_public_names_sorted_and_reachable() -> None:
    assert D.__all__ == sorted(D.__all__)
    for name in D.__all__:
        assert getattr(D, name) is not None
    assert D.functional.drop_path is not None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_low_precision_and_double(name: str, dtype: torch.dtype) -> None:
    make, shape = LAYERS[name]
    layer = make(torch.Generator().manual_seed(0)).to(dtype).train()
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1)).add_(0.5).to(dtype)
    y = layer(x)
    assert y.dtype == dtype
    assert torch.isfinite(y).all()
    if name in ("Dropout", "Dropout-low_memory", "DropPath"):
        # kept entries are x / (1 - p) within the dtype's tolerance
        keep = y != 0
        assert_close_to_f64(y[keep], x.double()[keep] / 0.7, dtype=dtype)
