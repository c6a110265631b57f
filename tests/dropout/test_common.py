"""Cross-cutting checks over every dropout layer: eval identity, generator, repr, state_dict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import traintech.dropout as D

# (factory(generator) -> module, input shape)
LAYERS = {
    "Dropout": (lambda g: D.Dropout(0.3, generator=g), (4, 5, 6)),
    "Dropout-original": (lambda g: D.Dropout(0.3, mode="original", generator=g), (4, 5, 6)),
    "Dropout-low_memory": (lambda g: D.Dropout(0.3, low_memory=True, generator=g), (64, 1024)),
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
    for _ in range(2):
        torch.manual_seed(123)
        before = torch.get_rng_state()
        layer = make(torch.Generator().manual_seed(7))
        torch.manual_seed(123)
        layer.load_state_dict(layer.state_dict())
        outs.append(layer.train()(x))
        assert torch.equal(torch.get_rng_state(), before)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    # a different seed gives a different mask
    other = make(torch.Generator().manual_seed(8))
    if name == "DropConnect":
        other.module.load_state_dict(layer.module.state_dict())
    assert not torch.equal(other.train()(x), outs[0])


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
    if name.startswith("DropConnect"):
        expected = nn.functional.linear(x, layer.module.weight, layer.module.bias)
    elif "Alpha" in name:
        expected = x
    else:
        expected = x
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


def test_public_names_sorted_and_reachable() -> None:
    assert D.__all__ == sorted(D.__all__)
    for name in D.__all__:
        assert getattr(D, name) is not None
    assert D.functional.drop_path is not None
