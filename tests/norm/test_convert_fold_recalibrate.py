"""Model-level utilities: norm conversion, BatchNorm folding, running-stat recalibration."""

from __future__ import annotations

import builtins

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

import traintech.norm as tn

from _helpers import assert_close_to_f64


@pytest.mark.parametrize(
    ("channels", "wanted", "expected"),
    [(64, 32, 32), (48, 32, 24), (30, 4, 5), (7, 4, 7), (12, 100, 12), (1, 32, 1), (96, 1, 1)],
)
def test_choose_num_groups_picks_the_nearest_divisor(channels, wanted, expected):
    got = tn.choose_num_groups(channels, wanted)
    assert got == expected
    assert channels % got == 0
    best = min(abs(g - wanted) for g in range(1, channels + 1) if channels % g == 0)
    assert abs(got - wanted) == best


@pytest.mark.parametrize(("channels", "size", "expected"), [(64, 16, 4), (96, 20, 6), (7, 2, 7)])
def test_choose_num_groups_by_group_size(channels, size, expected):
    assert tn.choose_num_groups(channels, group_size=size) == expected


def _convnet(gen):
    net = nn.Sequential(
        nn.Conv2d(3, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
        nn.Conv2d(48, 10, 1, bias=False), tn.BatchNorm2d(10), nn.Flatten(),
        nn.Linear(10 * 25, 7), nn.BatchNorm1d(7),
    )  # fmt: skip
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, tn.BatchNorm2d)):
                m.weight.normal_(generator=gen)
                m.bias.normal_(generator=gen)
                m.running_mean.normal_(generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
    return net


def test_batchnorm_to_groupnorm_carries_affine_and_picks_valid_groups(seed):
    net = _convnet(seed)
    w = net[1].weight.detach().clone()
    tn.batchnorm_to_groupnorm(net, num_groups=32)
    assert isinstance(net[1], tn.GroupNorm) and net[1].num_groups == 24
    assert isinstance(net[4], tn.GroupNorm) and net[4].num_groups == 10
    assert torch.equal(net[1].weight, w)
    x = torch.randn(2, 3, 5, 5, generator=seed)
    y = net[1](net[0](x))
    ref = torch.nn.functional.group_norm(net[0](x), 24, net[1].weight, net[1].bias)
    torch.testing.assert_close(y, ref)
    gs = tn.batchnorm_to_groupnorm(nn.BatchNorm2d(64), group_size=16)
    assert isinstance(gs, tn.GroupNorm) and gs.num_groups == 4


def test_batchnorm_to_layernorm_normalizes_each_position_over_channels(seed):
    net = _convnet(seed)
    tn.batchnorm_to_layernorm(net)
    assert isinstance(net[1], tn.ChannelLayerNorm)
    h = torch.randn(2, 48, 5, 5, generator=seed, dtype=torch.float64)
    layer = net[1].double()
    mean = h.mean(1, keepdim=True)
    var = ((h - mean) ** 2).mean(1, keepdim=True)
    w, b = layer.weight.detach().view(1, -1, 1, 1), layer.bias.detach().view(1, -1, 1, 1)
    assert_close_to_f64(layer(h), (h - mean) / torch.sqrt(var + 1e-5) * w + b)


def test_freeze_batchnorm_keeps_eval_output(seed):
    net = _convnet(seed).eval()
    x = torch.randn(4, 3, 5, 5, generator=seed)
    before = net(x)
    tn.freeze_batchnorm(net)
    assert isinstance(net[1], tn.FrozenBatchNorm2d) and isinstance(net[4], tn.FrozenBatchNorm2d)
    assert isinstance(net[7], nn.BatchNorm1d)  # only 2d layers are frozen
    net.train()
    net[7].eval()
    torch.testing.assert_close(net(x), before)


@pytest.mark.parametrize("method", ["auto", "fx", "sequential"])
def test_fold_batchnorm_whole_model_matches_eval_within_1e5(method, seed):
    net = _convnet(seed)
    x = torch.randn(4, 3, 5, 5, generator=seed)
    folded = tn.fold_batchnorm(net, method=method)
    assert not any(tn.is_batchnorm(m) for m in folded.modules())
    assert any(tn.is_batchnorm(m) for m in net.modules())  # original untouched
    torch.testing.assert_close(folded(x), net.eval()(x), rtol=1e-5, atol=1e-5)


class _Block(nn.Module):
    """ResNet-like block with attribute layers (needs fx, not Sequential adjacency)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1), tn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + x)


def test_fold_batchnorm_traces_residual_blocks_with_fx(seed):
    block = _Block()
    for bn in (block.bn1, block.bn2):
        bn.running_mean.normal_(generator=seed)
        bn.running_var.uniform_(0.5, 2, generator=seed)
    x = torch.randn(2, 4, 6, 6, generator=seed)
    folded = tn.fold_batchnorm(block)
    assert not any(tn.is_batchnorm(m) for m in folded.modules())
    torch.testing.assert_close(folded(x), block.eval()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["conv", "linear", "convT"])
def test_fold_into_layer_matches_torch_fusion(kind, seed):
    if kind == "conv":
        layer, bn = nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6)
        x = torch.randn(2, 3, 5, 5, generator=seed)
    elif kind == "linear":
        layer, bn, x = nn.Linear(5, 6), nn.BatchNorm1d(6), torch.randn(4, 5, generator=seed)
    else:
        layer, bn = nn.ConvTranspose2d(3, 6, 2), nn.BatchNorm2d(6)
        x = torch.randn(2, 3, 4, 4, generator=seed)
    bn.running_mean.normal_(generator=seed)
    bn.running_var.uniform_(0.5, 2.0, generator=seed)
    bn.weight.data.normal_(generator=seed)
    layer.eval()
    bn.eval()
    ours = tn.fold_batchnorm_into(layer, bn)
    if kind == "linear":
        theirs = fuse_linear_bn_eval(layer, bn)
    else:
        theirs = fuse_conv_bn_eval(layer, bn, transpose=kind == "convT")
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.bias, theirs.bias, rtol=1e-6, atol=1e-6)
    ref = bn.double()(layer.double()(x.double()))
    assert_close_to_f64(ours(x), ref, rtol=1e-5, atol=1e-5)
    exact = tn.fold_batchnorm_into(layer.double(), bn.double())  # folded in float64
    assert_close_to_f64(exact(x.double()), ref, rtol=1e-12, atol=1e-12)


def test_fold_refuses_mismatched_pairs():
    with pytest.raises(ValueError, match="cannot fold"):
        tn.fold_batchnorm_into(nn.Conv2d(3, 5, 1), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="method"):
        tn.fold_batchnorm(nn.Sequential(), method="magic")


def _bn_net():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, momentum=0.3), nn.ReLU(),
                         nn.Linear(4, 2), tn.BatchNorm1d(2))  # fmt: skip


def _expected_stats(net, batches):
    """Cumulative average of per-batch statistics, computed layer by layer in float64."""
    feats1, feats2 = [], []
    with torch.no_grad():
        for x in batches:
            h1 = net[0](x).double()
            feats1.append((h1.mean(0), h1.var(0, correction=1)))
            bn1 = (h1 - h1.mean(0)) / torch.sqrt(h1.var(0, correction=0) + 1e-5)
            bn1 = bn1 * net[1].weight.double() + net[1].bias.double()
            h2 = net[3](torch.relu(bn1).float()).double()
            feats2.append((h2.mean(0), h2.var(0, correction=1)))
    avg = [
        (torch.stack([m for m, _ in f]).mean(0), torch.stack([v for _, v in f]).mean(0))
        for f in (feats1, feats2)
    ]
    return avg


@pytest.mark.parametrize("form", ["tensor", "tuple", "dict", "input_fn"])
def test_recalibrate_is_cumulative_average_and_restores_state(form, seed):
    net = _bn_net()
    net[1].running_mean.fill_(5.0)
    batches = [torch.randn(8, 3, generator=seed) * (i + 1) for i in range(4)]
    if form == "tensor":
        loader, kwargs = batches, {}
    elif form == "tuple":
        loader, kwargs = [(x, torch.zeros(8)) for x in batches], {}
    elif form == "dict":

        class Wrapper(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, features, labels=None):
                return self.inner(features)

        loader, kwargs = [{"features": x, "labels": None} for x in batches], {}
        net = Wrapper(net)
    else:
        loader, kwargs = [{"x": x} for x in batches], {"input_fn": lambda b: b["x"]}
    inner = net.inner if form == "dict" else net
    net.eval()
    inner[3].train()
    out = tn.recalibrate_batchnorm(net, loader, **kwargs)
    assert out is net
    assert not net.training and inner[3].training and not inner[1].training
    assert inner[1].momentum == 0.3 and inner[4].momentum == 0.1
    (m1, v1), (m2, v2) = _expected_stats(inner, batches)
    assert_close_to_f64(inner[1].running_mean, m1, rtol=1e-5, atol=1e-5)
    assert_close_to_f64(inner[1].running_var, v1, rtol=1e-5, atol=1e-5)
    assert_close_to_f64(inner[4].running_mean, m2, rtol=1e-4, atol=1e-4)
    assert_close_to_f64(inner[4].running_var, v2, rtol=1e-4, atol=1e-4)
    assert all(p.grad is None for p in net.parameters())


def test_recalibrate_max_batches_and_progress(seed, monkeypatch, capsys):
    net = _bn_net()
    batches = [torch.randn(8, 3, generator=seed) + 10 * i for i in range(5)]
    tn.recalibrate_batchnorm(net, batches, max_batches=2, progress=True)
    (m1, _), _ = _expected_stats(net, batches[:2])
    assert_close_to_f64(net[1].running_mean, m1, rtol=1e-5, atol=1e-5)
    assert int(net[1].num_batches_tracked) == 2
    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    with pytest.raises(ImportError, match=r"pip install 'traintech\[demo\]'"):
        tn.recalibrate_batchnorm(net, batches, progress=True)
    assert net[1].momentum == 0.3  # restored after the failure
    with pytest.raises(ValueError, match="max_batches"):
        tn.recalibrate_batchnorm(net, batches, max_batches=0)


def test_fold_and_recalibrate_cover_frozen_and_ghost_layers(seed):
    net = nn.Sequential(
        nn.Conv2d(2, 4, 1), tn.GhostBatchNorm(4, virtual_batch_size=2), nn.ReLU(),
        nn.Conv2d(4, 4, 1), tn.FrozenBatchNorm2d(4),
    )  # fmt: skip
    data = [torch.randn(6, 2, 3, 3, generator=seed) for _ in range(3)]
    tn.recalibrate_batchnorm(net, data)
    assert int(net[1].num_batches_tracked) == 3
    assert net[1].momentum == 0.1
    with torch.no_grad():
        net[4].running_var.uniform_(0.5, 2.0, generator=seed)
    folded = tn.fold_batchnorm(net)
    norms = (tn.BatchNorm2d, tn.GhostBatchNorm, tn.FrozenBatchNorm2d)
    assert not any(isinstance(m, norms) for m in folded.modules())
    torch.testing.assert_close(folded(data[0]), net.eval()(data[0]), rtol=1e-5, atol=1e-5)
