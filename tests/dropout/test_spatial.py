"""Dropout1d/2d/3d: whole channels dropped, batched and unbatched inputs, rank checks."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import traintech.dropout as D
from traintech.dropout import functional as F

from _helpers import assert_close_to_f64

CASES = [  # (function, module class, shape, number of leading (mask) dims)
    (F.dropout1d, D.Dropout1d, (6, 8, 5), 2),
    (F.dropout1d, D.Dropout1d, (8, 5), 1),
    (F.dropout2d, D.Dropout2d, (6, 8, 4, 5), 2),
    (F.dropout3d, D.Dropout3d, (6, 8, 2, 3, 4), 2),
    (F.dropout3d, D.Dropout3d, (8, 2, 3, 4), 1),
]


@pytest.mark.parametrize(("fn", "cls", "shape", "lead"), CASES)
@pytest.mark.parametrize("mode", ["inverted", "original"])
def test_whole_channels_dropped(fn, cls, shape, lead, mode, seed) -> None:
    p = 0.4
    x = torch.rand(shape, generator=seed, dtype=torch.float64) + 0.5
    y = fn(x, p, True, mode=mode, generator=seed)
    dropped = (y == 0).flatten(lead)
    # the same decision at every position of a channel
    assert torch.equal(dropped.all(-1), dropped.any(-1))
    keep = (~dropped[..., :1]).double().reshape(*shape[:lead], *([1] * (len(shape) - lead)))
    scale = 1 / (1 - p) if mode == "inverted" else 1.0
    assert_close_to_f64(y, x * keep * scale)
    m = cls(p, mode=mode, generator=torch.Generator().manual_seed(2))
    y2 = fn(x, p, True, mode=mode, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(m(x), y2, rtol=0, atol=0)


@pytest.mark.parametrize(("fn", "cls", "shape", "lead"), CASES)
def test_channel_drop_fraction(fn, cls, shape, lead, seed) -> None:
    p, reps = 0.3, 200
    x = torch.ones(shape)
    n = math.prod(shape[:lead]) * reps
    dropped = sum(
        (fn(x, p, True, generator=seed).flatten(lead)[..., 0] == 0).sum().item()
        for _ in range(reps)
    )
    assert abs(dropped / n - p) <= 5 * math.sqrt(p * (1 - p) / n)


def test_dropout2d_3d_input_warns_like_torch(seed) -> None:
    x = torch.rand(4, 6, 5, generator=seed) + 0.5
    with pytest.warns(UserWarning, match="dropout1d"):
        y = F.dropout2d(x, 0.5, True, generator=seed)
    dropped = y == 0
    assert torch.equal(dropped.all(-1), dropped.any(-1))  # (N, C, L): channel = last dim


def test_no_warning_for_supported_ranks(seed) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.dropout1d(torch.ones(2, 3), 0.5, True, generator=seed)
        F.dropout2d(torch.ones(1, 2, 3, 3), 0.5, True, generator=seed)
        F.dropout3d(torch.ones(2, 3, 3, 3), 0.5, True, generator=seed)


@pytest.mark.parametrize(
    ("fn", "shape"),
    [
        (F.dropout1d, (5,)),
        (F.dropout1d, (2, 3, 4, 5)),
        (F.dropout2d, (2, 3)),
        (F.dropout2d, (1, 2, 3, 4, 5)),
        (F.dropout3d, (2, 3, 4)),
        (F.dropout3d, (1, 2, 3, 4, 5, 6)),
    ],
)
def test_wrong_rank_raises_naming_shape(fn, shape) -> None:
    with pytest.raises(ValueError, match=r"input.*shape"):
        fn(torch.ones(shape), 0.5, True)


@pytest.mark.parametrize("cls", [D.Dropout1d, D.Dropout2d, D.Dropout3d])
def test_drop_in_for_torch(cls) -> None:
    torch_cls = getattr(torch.nn, cls.__name__)
    ours, theirs = cls(0.25), torch_cls(0.25)
    assert isinstance(ours, torch_cls)
    assert ours.extra_repr() == theirs.extra_repr()
    assert ours.state_dict() == theirs.state_dict() == {}
