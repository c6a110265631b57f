"""Bad arguments and inputs: ValueError/TypeError naming the argument, raised before any change."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch
from torch import nn

import traintech.norm as tn
import traintech.norm.functional as F

# (factory taking **overrides, good input shape, wrong-rank shape, wrong-channel shape)
LAYERS = [
    (lambda **k: tn.BatchNorm1d(4, **k), (3, 4), (3, 4, 2, 2), (3, 5)),
    (lambda **k: tn.BatchNorm2d(4, **k), (3, 4, 2, 2), (3, 4, 2), (3, 5, 2, 2)),
    (lambda **k: tn.BatchNorm3d(4, **k), (3, 4, 2, 2, 2), (3, 4, 2, 2), (3, 5, 2, 2, 2)),
    (lambda **k: tn.GhostBatchNorm(4, 2, **k), (3, 4), (3,), (3, 5)),
    (lambda **k: tn.InstanceNorm1d(4, affine=True, **k), (3, 4, 5), (3, 4, 5, 5), (3, 5, 5)),
    (lambda **k: tn.InstanceNorm2d(4, affine=True, **k), (3, 4, 5, 5), (3, 4), (3, 5, 5, 5)),
    (lambda **k: tn.InstanceNorm3d(4, affine=True, **k), (3, 4, 2, 2, 2), (4, 2), (3, 5, 2, 2, 2)),
]
IDS = ["bn1d", "bn2d", "bn3d", "ghost", "in1d", "in2d", "in3d"]


@pytest.mark.parametrize(("make", "good", "rank", "channels"), LAYERS, ids=IDS)
def test_wrong_rank_and_channels_name_the_shape_and_change_nothing(make, good, rank, channels):
    layer = make()
    with pytest.raises(ValueError, match=r"got .*\b" + str(len(rank)) + r"D input of shape"):
        layer(torch.randn(rank))
    with pytest.raises(ValueError, match=r"num_features \(4\).*" + r"\(3, 5"):
        layer(torch.randn(channels))
    if getattr(layer, "num_batches_tracked", None) is not None:
        assert int(layer.num_batches_tracked) == 0
    layer(torch.randn(good))


@pytest.mark.parametrize(("make", "good", "rank", "channels"), LAYERS, ids=IDS)
@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan")])
def test_eps_must_be_positive(make, good, rank, channels, eps):
    with pytest.raises(ValueError, match="eps"):
        make(eps=eps)


@pytest.mark.parametrize(("make", "good", "rank", "channels"), LAYERS, ids=IDS)
@pytest.mark.parametrize("momentum", [-0.1, 1.5])
def test_momentum_must_lie_in_unit_interval(make, good, rank, channels, momentum):
    with pytest.raises(ValueError, match="momentum"):
        make(momentum=momentum)


@pytest.mark.parametrize(
    "make",
    [
        lambda: tn.LayerNorm(4, eps=0.0),
        lambda: tn.GroupNorm(2, 4, eps=-1.0),
        lambda: tn.RMSNorm(4, eps=0.0),
        lambda: tn.FrozenBatchNorm2d(4, eps=0.0),
        lambda: tn.ChannelLayerNorm(4, eps=0.0),
        lambda: F.layer_norm(torch.randn(2, 4), (4,), eps=0.0),
        lambda: F.rms_norm(torch.randn(2, 4), (4,), eps=-1.0),
        lambda: F.batch_norm(torch.randn(2, 4), None, None, training=True, eps=0.0),
        lambda: F.group_norm(torch.randn(2, 4), 2, eps=0.0),
    ],
)
def test_eps_checked_everywhere(make):
    with pytest.raises(ValueError, match="eps"):
        make()
    with pytest.raises(TypeError, match="eps"):
        tn.LayerNorm(4, eps="small")


def test_group_count_must_divide_channels_at_construction():
    with pytest.raises(ValueError, match=r"num_channels \(10\).*num_groups \(4\)"):
        tn.GroupNorm(4, 10)
    with pytest.raises(ValueError, match=r"num_channels \(10\).*num_groups \(4\)"):
        F.group_norm(torch.randn(2, 10, 3), 4)
    with pytest.raises(ValueError, match="num_groups"):
        tn.GroupNorm(0, 10)


def test_trailing_shape_errors_name_the_shape():
    for layer in (tn.LayerNorm(8), tn.RMSNorm(8), tn.FusedAddRMSNorm(8), tn.FusedAddLayerNorm(8)):
        with pytest.raises(ValueError, match=r"normalized_shape=\(8,\).*\(2, 7\)"):
            layer(torch.randn(2, 7))
    with pytest.raises(ValueError, match=r"num_channels \(6\).*\(2, 4, 3\)"):
        tn.GroupNorm(2, 6)(torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match=r"residual.*\(2, 8\).*\(2, 1\)"):
        tn.FusedAddRMSNorm(8)(torch.randn(2, 8), torch.randn(2, 1))


def test_bad_sizes_and_options():
    with pytest.raises(ValueError, match="num_features"):
        tn.BatchNorm2d(0)
    with pytest.raises(TypeError, match="num_features"):
        tn.BatchNorm2d(4.0)
    with pytest.raises(ValueError, match="virtual_batch_size"):
        tn.GhostBatchNorm(4, virtual_batch_size=0)
    with pytest.raises(ValueError, match="normalized_shape"):
        tn.LayerNorm((4, 0))
    with pytest.raises(ValueError, match="num_groups.*group_size"):
        tn.choose_num_groups(8, num_groups=2, group_size=4)
    with pytest.raises(ValueError, match="group_size"):
        tn.batchnorm_to_groupnorm(nn.BatchNorm2d(4), group_size=0)
    with pytest.raises(ValueError, match="Expected more than 1 spatial element"):
        tn.InstanceNorm1d(3)(torch.randn(2, 3, 1))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        tn.GroupNorm(2, 2)(torch.randn(1, 2))


MODULES = ["_stats", "_batch_norm", "_layer_norm", "_group_norm", "_instance_norm", "_rms_norm",
           "_fused_add_norm", "_ghost_batch_norm", "_frozen_batch_norm", "_convert",
           "_recalibrate", "_fold"]  # fmt: skip


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(f"traintech.norm.{name}")
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, extraglobs={"torch": torch, "nn": nn}, optionflags=flags)
    assert result.failed == 0
    assert result.attempted > 0


def test_public_surface_is_sorted_and_reachable():
    assert tn.__all__ == sorted(tn.__all__)
    assert F.__all__ == sorted(F.__all__)
    for name in tn.__all__ + [f"functional.{n}" for n in F.__all__]:
        obj = tn
        for part in name.split("."):
            obj = getattr(obj, part)
