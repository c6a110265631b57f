"""DropConnect: weights of the wrapped layer dropped, state_dict keys of the wrapped layer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import traintech.dropout as D
from traintech.dropout import functional as F


@pytest.mark.parametrize("mode", ["inverted", "original"])
def test_linear_uses_masked_weight(mode, seed) -> None:
    p = 0.4
    layer = nn.Linear(7, 5).double()
    m = D.DropConnect(layer, p, mode=mode, generator=torch.Generator().manual_seed(3))
    x = torch.randn(4, 7, generator=seed, dtype=torch.float64)
    y = m(x)
    w = F.drop_connect(layer.weight, p, True, mode=mode, generator=torch.Generator().manual_seed(3))
    keep = (w != 0).double()
    assert 0 < keep.sum() < keep.numel()
    scale = 1 / (1 - p) if mode == "inverted" else 1.0
    ref = x @ (layer.weight.detach() * keep * scale).T + layer.bias.detach()
    torch.testing.assert_close(y, ref)
    y.sum().backward()
    # the gradient reaches only the kept weights, scaled
    ref_grad = (torch.ones(4, 5, dtype=torch.float64).T @ x) * keep * scale
    torch.testing.assert_close(layer.weight.grad, ref_grad)


def test_original_mode_eval_scales_weight(seed) -> None:
    layer = nn.Linear(3, 2).double()
    m = D.DropConnect(layer, 0.25, mode="original").eval()
    x = torch.randn(2, 3, generator=seed, dtype=torch.float64)
    torch.testing.assert_close(m(x), x @ (0.75 * layer.weight.detach()).T + layer.bias.detach())


def test_conv_weight_dropped(seed) -> None:
    conv = nn.Conv2d(2, 3, 3, padding=1)
    m = D.DropConnect(conv, 0.5, generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, 2, 5, 5, generator=seed)
    w = F.drop_connect(conv.weight, 0.5, True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(m(x), nn.functional.conv2d(x, w, conv.bias, padding=1))


def test_weight_drop_fraction(seed) -> None:
    m = D.DropConnect(nn.Linear(256, 256, bias=False), 0.2, generator=seed)
    x = torch.eye(256)
    # row i of the output holds column i of the masked weight
    masked = m(x).T
    n = masked.numel()
    frac = (masked == 0).double().mean().item()
    assert abs(frac - 0.2) <= 5 * math.sqrt(0.2 * 0.8 / n)


def test_state_dict_keys_unchanged_and_plain_checkpoint_loads() -> None:
    plain = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    wrapped = nn.Sequential(
        D.DropConnect(nn.Linear(4, 3), 0.5), nn.ReLU(), D.DropConnect(nn.Linear(3, 2), 0.5)
    )
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    wrapped.load_state_dict(plain.state_dict())  # strict
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(wrapped.state_dict()[key], value, rtol=0, atol=0)
    plain2 = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    plain2.load_state_dict(wrapped.state_dict())  # and back
    x = torch.randn(5, 4)
    torch.testing.assert_close(wrapped.eval()(x), plain2(x), rtol=0, atol=0)
    # parameters are still found for the optimizer
    assert [n for n, _ in wrapped.named_parameters()] == [
        "0.module.weight",
        "0.module.bias",
        "2.module.weight",
        "2.module.bias",
    ]


def test_root_state_dict_round_trip() -> None:
    m = D.DropConnect(nn.Linear(2, 2), 0.1)
    assert sorted(m.state_dict()) == ["bias", "weight"]
    other = D.DropConnect(nn.Linear(2, 2), 0.1)
    other.load_state_dict(m.state_dict())
    torch.testing.assert_close(other.module.weight, m.module.weight, rtol=0, atol=0)


def test_no_weight_raises_type_error() -> None:
    with pytest.raises(TypeError, match="module"):
        D.DropConnect(nn.ReLU(), 0.5)
    with pytest.raises(TypeError, match="module"):
        D.DropConnect(torch.ones(3), 0.5)  # type: ignore[arg-type]


def test_training_is_required() -> None:
    with pytest.raises(TypeError):
        F.drop_connect(torch.ones(3), 0.5)  # type: ignore[call-arg]


def test_lstm_recurrent_weight(seed) -> None:
    lstm = nn.LSTM(4, 3, batch_first=True).double()
    m = D.DropConnect(
        lstm, 0.5, generator=torch.Generator().manual_seed(2), weight_name="weight_hh_l0"
    )
    x = torch.randn(2, 5, 4, generator=seed, dtype=torch.float64)
    out = m(x)[0]
    w = F.drop_connect(
        lstm.weight_hh_l0, 0.5, True, generator=torch.Generator().manual_seed(2)
    ).detach()
    ref = torch.func.functional_call(lstm, {"weight_hh_l0": w}, (x,))[0]
    torch.testing.assert_close(out, ref)
    assert not torch.allclose(out, lstm(x)[0])
    assert "weight_name='weight_hh_l0'" in m.extra_repr()
    assert list(m.state_dict()) == list(nn.LSTM(4, 3).state_dict())
    with pytest.raises(TypeError, match="weight"):
        D.DropConnect(lstm, 0.5)
