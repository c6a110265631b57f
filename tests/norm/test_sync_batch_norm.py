"""SyncBatchNorm in one process (no group, or a group of one): exactly torch's BatchNorm."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from traintech.norm import SyncBatchNorm, convert_sync_batchnorm

TORCH_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
SHAPES = {1: (6, 3, 5), 2: (4, 3, 3, 2), 3: (3, 3, 2, 2, 2)}


def _pair(rank: int, **kwargs: Any) -> tuple[SyncBatchNorm, nn.Module]:
    ours = SyncBatchNorm(3, **kwargs)
    ref = TORCH_BN[rank](3, **kwargs)
    g = torch.Generator().manual_seed(5)
    if ours.weight is not None:
        with torch.no_grad():
            ours.weight.copy_(torch.rand(3, generator=g) + 0.5)
            if ours.bias is not None:
                ours.bias.copy_(torch.randn(3, generator=g))
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _run(bn: nn.Module, xs: list[torch.Tensor], training: bool) -> list[torch.Tensor]:
    bn.train(training)
    out = []
    for x in xs:
        x = x.clone().requires_grad_(True)
        y = bn(x)
        (y * torch.arange(y.numel(), dtype=y.dtype).view_as(y).cos()).sum().backward()
        out += [y.detach(), x.grad]
        out += [p.grad.clone() for p in bn.parameters()]
        bn.zero_grad()
    return out + [b.clone() for b in bn.buffers()]


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"momentum": None},
        {"momentum": 0.3, "affine": False},
        {"track_running_stats": False},
        {"bias": False},
    ],
    ids=["default", "cumulative", "no-affine", "no-stats", "no-bias"],
)
@pytest.mark.parametrize("training", [True, False])
def test_no_process_group_is_exactly_batchnorm(
    seed: torch.Generator, rank: int, kwargs: dict[str, Any], training: bool
) -> None:
    ours, ref = _pair(rank, **kwargs)
    xs = [torch.randn(SHAPES[rank], generator=seed) * 2 + 1 for _ in range(3)]
    for a, b in zip(_run(ours, xs, training), _run(ref, xs, training), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_group_of_one_process_is_exactly_batchnorm(seed: torch.Generator, tmp_path: Path) -> None:
    assert not dist.is_initialized()
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        ours, ref = _pair(2)
        xs = [torch.randn(SHAPES[2], generator=seed) for _ in range(2)]
        for a, b in zip(_run(ours, xs, True), _run(ref, xs, True), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    finally:
        dist.destroy_process_group()


def test_forward_matches_float64_formula(seed: torch.Generator) -> None:
    x = torch.randn(5, 2, 3, generator=seed, dtype=torch.float64) * 4 - 1
    bn = SyncBatchNorm(2, dtype=torch.float64)
    mean = x.mean(dim=(0, 2), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(0, 2), keepdim=True)
    torch.testing.assert_close(bn(x), (x - mean) / torch.sqrt(var + 1e-5))
    n = x.numel() / 2
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * var.flatten() * n / (n - 1))
    torch.testing.assert_close(bn.running_mean, 0.1 * mean.flatten())


def test_same_signature_state_dict_and_repr_as_torch() -> None:
    ours = inspect.signature(SyncBatchNorm.__init__).parameters
    theirs = inspect.signature(nn.SyncBatchNorm.__init__).parameters
    assert list(ours) == list(theirs)
    assert [p.default for p in ours.values()] == [p.default for p in theirs.values()]
    for kwargs in ({}, {"affine": False}, {"track_running_stats": False, "momentum": None}):
        a, b = SyncBatchNorm(7, **kwargs), nn.SyncBatchNorm(7, **kwargs)
        assert repr(a) == repr(b)
        assert list(a.state_dict()) == list(b.state_dict())
        assert a.state_dict()._metadata[""]["version"] == 2  # type: ignore[attr-defined]


def test_state_dict_round_trip_with_torch(seed: torch.Generator) -> None:
    torch_bn = nn.BatchNorm2d(3)
    torch_bn(torch.randn(4, 3, 2, 2, generator=seed))
    ours = SyncBatchNorm(3)
    ours.load_state_dict(torch_bn.state_dict())
    back = nn.BatchNorm2d(3)
    back.load_state_dict(ours.state_dict())
    for key, value in torch_bn.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)


def test_old_checkpoint_without_batch_counter_loads_as_torch_does() -> None:
    sd = SyncBatchNorm(3).state_dict()
    del sd["num_batches_tracked"]
    sd._metadata = {"": {"version": 1}}  # type: ignore[attr-defined]
    ours, theirs = SyncBatchNorm(3), nn.SyncBatchNorm(3)
    for bn in (ours, theirs):
        bn.num_batches_tracked.fill_(4)  # type: ignore[union-attr]
        bn.load_state_dict(sd)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked)  # type: ignore[arg-type]


def test_one_value_per_channel_in_training_raises() -> None:
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        SyncBatchNorm(3)(torch.randn(1, 3))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_features": 0}, ValueError, "num_features"),
        ({"num_features": 2.0}, TypeError, "num_features"),
        ({"num_features": 2, "eps": 0.0}, ValueError, "eps"),
        ({"num_features": 2, "momentum": 1.5}, ValueError, "momentum"),
        ({"num_features": 2, "momentum": -0.1}, ValueError, "momentum"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        SyncBatchNorm(**kwargs)


@pytest.mark.parametrize("shape", [(3,), (4, 5), (2, 2, 2)])
def test_bad_input_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="input"):
        SyncBatchNorm(3)(torch.randn(shape))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 1)
        self.bn = nn.BatchNorm2d(4, momentum=0.2, eps=1e-3)
        self.block = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5, affine=False))
        self.seq = nn.BatchNorm3d(2, track_running_stats=False)
        self.torch_sync = nn.SyncBatchNorm(3)


def test_convert_replaces_recursively_and_carries_everything(seed: torch.Generator) -> None:
    net = _Net()
    net.bn(torch.randn(5, 4, 2, 2, generator=seed))
    net.bn.weight.requires_grad_(False)
    net.block.eval()
    weight, bias = net.bn.weight, net.bn.bias
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = convert_sync_batchnorm(net, process_group=None)
    assert out is net
    for name in ("bn", "seq", "torch_sync"):
        assert type(getattr(net, name)) is SyncBatchNorm
    assert type(net.block[1]) is SyncBatchNorm and type(net.conv) is nn.Conv2d
    assert net.bn.weight is weight and net.bn.bias is bias
    assert not net.bn.weight.requires_grad
    assert (net.bn.momentum, net.bn.eps) == (0.2, 1e-3)
    assert not net.block[1].training and net.bn.training
    assert net.block[1].weight is None and net.seq.running_mean is None
    after = net.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value)


def test_convert_single_layer_and_classmethod() -> None:
    bn = nn.BatchNorm1d(3, dtype=torch.float64)
    new = SyncBatchNorm.convert_sync_batchnorm(bn, process_group="group")
    assert type(new) is SyncBatchNorm and new.process_group == "group"
    assert new.weight is bn.weight and new.running_var.dtype == torch.float64  # type: ignore[union-attr]


def test_convert_rejects_non_module() -> None:
    with pytest.raises(TypeError, match="module"):
        convert_sync_batchnorm([nn.BatchNorm1d(2)])  # type: ignore[arg-type]


def test_convert_traintech_batchnorm_but_not_ghost_batchnorm() -> None:
    from traintech.norm import BatchNorm2d, GhostBatchNorm, is_batchnorm

    net = nn.Sequential(BatchNorm2d(3, momentum=None), GhostBatchNorm(3, 4))
    bn_weight = net[0].weight
    convert_sync_batchnorm(net)
    assert type(net[0]) is SyncBatchNorm and net[0].weight is bn_weight
    assert net[0].momentum is None
    assert type(net[1]) is GhostBatchNorm
    assert is_batchnorm(net[0])
