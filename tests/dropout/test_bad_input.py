"""Bad input across the family: ValueError / TypeError naming the argument."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import traintech.dropout as D
from traintech.dropout import functional as F

CONSTRUCTORS = {
    "Dropout": lambda p: D.Dropout(p),
    "Dropout1d": lambda p: D.Dropout1d(p),
    "Dropout2d": lambda p: D.Dropout2d(p),
    "Dropout3d": lambda p: D.Dropout3d(p),
    "AlphaDropout": lambda p: D.AlphaDropout(p),
    "FeatureAlphaDropout": lambda p: D.FeatureAlphaDropout(p),
    "DropPath": lambda p: D.DropPath(p),
    "DropBlock2d": lambda p: D.DropBlock2d(p, 3),
    "DropConnect": lambda p: D.DropConnect(nn.Linear(2, 2), p),
}

FUNCTIONS = {
    "dropout": lambda x, p: F.dropout(x, p, True),
    "dropout1d": lambda x, p: F.dropout1d(x[0], p, True),
    "dropout2d": lambda x, p: F.dropout2d(x, p, True),
    "dropout3d": lambda x, p: F.dropout3d(x, p, True),
    "alpha_dropout": lambda x, p: F.alpha_dropout(x, p, True),
    "feature_alpha_dropout": lambda x, p: F.feature_alpha_dropout(x, p, True),
    "drop_connect": lambda x, p: F.drop_connect(x, p, True),
    "drop_path": lambda x, p: F.drop_path(x, p, True),
    "drop_block2d": lambda x, p: F.drop_block2d(x, p, 2, True),
}


@pytest.mark.parametrize("name", sorted(CONSTRUCTORS))
@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_constructor_rejects_bad_p(name, p) -> None:
    with pytest.raises(ValueError, match=r"\bp\b"):
        CONSTRUCTORS[name](p)


@pytest.mark.parametrize("name", sorted(CONSTRUCTORS))
def test_constructor_rejects_non_number_p(name) -> None:
    with pytest.raises(TypeError, match=r"\bp\b"):
        CONSTRUCTORS[name]("0.5")


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("p", [-0.5, 2.0])
def test_functional_rejects_bad_p(name, p) -> None:
    with pytest.raises(ValueError, match=r"\bp\b"):
        FUNCTIONS[name](torch.ones(2, 3, 4, 4), p)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_functional_rejects_non_float_input(name) -> None:
    arg = {"drop_connect": "weight", "drop_path": "x"}.get(name, "input")
    with pytest.raises(TypeError, match=f"^{arg} must be a floating-point tensor"):
        FUNCTIONS[name](torch.ones(2, 3, 4, 4, dtype=torch.int64), 0.5)


def test_bad_mode_and_generator() -> None:
    with pytest.raises(ValueError, match="mode"):
        D.Dropout(0.1, mode="scaled")
    with pytest.raises(ValueError, match="mode"):
        F.dropout(torch.ones(2), 0.1, True, mode="scaled")
    with pytest.raises(TypeError, match="generator"):
        D.Dropout(0.1, generator=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="training"):
        F.dropout(torch.ones(2), 0.1, "yes")  # type: ignore[arg-type]


def test_p_one_allowed_where_it_can_be_honoured() -> None:
    for name in ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "DropPath", "DropBlock2d"):
        assert CONSTRUCTORS[name](1.0).p == 1.0


def test_numpy_and_int_rates_accepted() -> None:
    import numpy as np

    assert D.Dropout(np.float32(0.25)).p == 0.25
    assert D.Dropout(0).p == 0.0
    assert D.DropPath(1).p == 1.0
