"""Activation checkpointing: the recomputation sees the forward's masks, generator or not.

``torch.utils.checkpoint`` restores torch's global RNG before recomputing, not a user's
``generator``; traintech replays the generator's state. Reference: the same model run without
checkpointing, same seeds: outputs and gradients must be identical.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import traintech.dropout as D

P = 0.4
# name -> (factory(generator) -> layer, input shape)
LAYERS: dict[str, tuple[Callable[[torch.Generator | None], nn.Module], tuple[int, ...]]] = {
    "Dropout": (lambda g: D.Dropout(P, generator=g), (4, 8)),
    "Dropout-original": (lambda g: D.Dropout(P, mode="original", generator=g), (4, 8)),
    "Dropout-fast": (lambda g: D.Dropout(P, generator=g), (256, 512)),
    "Dropout-fast-low_memory": (lambda g: D.Dropout(P, generator=g, low_memory=True), (256, 512)),
    "Dropout-low_memory": (lambda g: D.Dropout(P, generator=g, low_memory=True), (4, 8)),
    "Dropout1d": (lambda g: D.Dropout1d(P, generator=g), (4, 3, 8)),
    "Dropout2d": (lambda g: D.Dropout2d(P, generator=g), (2, 3, 4, 8)),
    "Dropout3d": (lambda g: D.Dropout3d(P, generator=g), (2, 3, 2, 2, 8)),
    "AlphaDropout": (lambda g: D.AlphaDropout(P, generator=g), (4, 8)),
    "FeatureAlphaDropout": (lambda g: D.FeatureAlphaDropout(P, generator=g), (2, 3, 4, 8)),
    "DropPath": (lambda g: D.DropPath(P, generator=g), (16, 8)),
    "DropBlock2d": (lambda g: D.DropBlock2d(P, 2, generator=g), (2, 3, 8, 8)),
    "DropConnect": (lambda g: D.DropConnect(nn.Linear(8, 8).double(), P, generator=g), (4, 8)),
}


def _run(
    make_region: Callable[[], Callable[[torch.Tensor], torch.Tensor]],
    x0: torch.Tensor,
    mode: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    region = make_region()
    x = x0.clone().requires_grad_()
    if mode == "plain":
        out = region(x)
    else:
        out = checkpoint(region, x, use_reentrant=mode == "reentrant")
    out.pow(2).sum().backward()
    assert x.grad is not None
    return out.detach(), x.grad


def _region(name: str, with_gen: bool) -> Callable[[], Callable[[torch.Tensor], torch.Tensor]]:
    make, shape = LAYERS[name]

    def build() -> Callable[[torch.Tensor], torch.Tensor]:
        layer = make(torch.Generator().manual_seed(5) if with_gen else None).double()
        w = torch.linspace(-1, 1, shape[-1] ** 2, dtype=torch.float64).view(shape[-1], -1)
        return lambda t: layer(t @ w).sin()

    return build


@pytest.mark.parametrize("mode", ["reentrant", "non_reentrant"])
@pytest.mark.parametrize("with_gen", [False, True], ids=["global", "generator"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_checkpoint_gradients_equal_plain(name: str, with_gen: bool, mode: str) -> None:
    x0 = torch.randn(LAYERS[name][1], dtype=torch.float64, generator=torch.Generator())
    plain = _run(_region(name, with_gen), x0, "plain")
    ckpt = _run(_region(name, with_gen), x0, mode)
    torch.testing.assert_close(ckpt[0], plain[0], rtol=0, atol=0)
    torch.testing.assert_close(ckpt[1], plain[1], rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["reentrant", "non_reentrant"])
def test_shared_generator_and_repeated_calls_replay_in_order(mode: str) -> None:
    # two layers sharing one generator, one of them called twice, in one checkpointed region
    def build() -> Callable[[torch.Tensor], torch.Tensor]:
        g = torch.Generator().manual_seed(9)
        a, b = D.Dropout(P, generator=g), D.DropPath(P, generator=g)
        return lambda t: a(b(a(t) * 2.0).cos())

    x0 = torch.randn(16, 8, dtype=torch.float64)
    plain = _run(build, x0, "plain")
    ckpt = _run(build, x0, mode)
    torch.testing.assert_close(ckpt[1], plain[1], rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["reentrant", "non_reentrant"])
def test_two_regions_and_the_caller_generator_left_alone(mode: str) -> None:
    g = torch.Generator().manual_seed(1)
    layer = D.Dropout(P, generator=g)
    x = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    y = checkpoint(layer, x, use_reentrant=mode == "reentrant")
    y2 = checkpoint(layer, y.sin(), use_reentrant=mode == "reentrant")
    state_after_forward = g.get_state()
    y2.sum().backward()
    assert torch.equal(g.get_state(), state_after_forward)  # recomputation used a copy
    # reference: the same two draws without checkpointing
    g.manual_seed(1)
    xr = x.detach().clone().requires_grad_()
    layer(layer(xr).sin()).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=0, atol=0)


def test_without_replay_the_recomputation_would_differ() -> None:
    # the hazard this guards against: a plain generator draw under checkpoint changes mask
    g = torch.Generator().manual_seed(2)

    def region(t: torch.Tensor) -> torch.Tensor:
        return t * torch.empty_like(t).bernoulli_(0.5, generator=g)

    x = torch.ones(64, dtype=torch.float64, requires_grad=True)
    out = checkpoint(region, x, use_reentrant=False)
    out.sum().backward()
    assert not torch.equal(x.grad, out.detach())


def test_recomputation_drawing_from_an_unseen_generator_refuses() -> None:
    g = torch.Generator().manual_seed(0)
    layer = D.Dropout(P, generator=g)
    calls = {"n": 0}

    def region(t: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return layer(t.sin()) if calls["n"] > 1 else t.sin()  # draws only when recomputed

    x = torch.randn(4, 8, requires_grad=True)
    out = checkpoint(region, x, use_reentrant=True)  # recomputes the whole region
    with pytest.raises(RuntimeError, match="generator=None"):
        out.sum().backward()
