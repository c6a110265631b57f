"""Convert the norm layers of a model: BatchNorm -> GroupNorm, channel LayerNorm, or frozen."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from traintech._checks import check_positive_int
from traintech._compat import BatchNormBase
from traintech.norm._batch_norm import BatchNorm2d
from traintech.norm._frozen_batch_norm import FrozenBatchNorm2d
from traintech.norm._group_norm import GroupNorm
from traintech.norm._layer_norm import ChannelLayerNorm
from traintech.norm._stats import check_eps

#: BatchNorm classes the converters recognise (torch's and ours, SyncBatchNorm included).
BATCHNORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    BatchNormBase,
)


def is_batchnorm(module: nn.Module) -> bool:
    """True for torch's and traintech's BatchNorm layers (any rank, Sync and Ghost included)."""
    return isinstance(module, BATCHNORM_TYPES)


def choose_num_groups(
    num_channels: int, num_groups: int | None = None, group_size: int | None = None
) -> int:
    """A group count that divides ``num_channels``, nearest the one asked for.

    Give ``num_groups`` (the count you want) or ``group_size`` (channels per group you want);
    with neither, ``num_groups=32`` (Wu & He 2018's default). The result is the divisor ``G`` of
    ``num_channels`` closest to ``num_groups`` (or whose group size ``num_channels / G`` is
    closest to ``group_size``); ties go to more groups.

    Args:
        num_channels: channels to split, >= 1.
        num_groups: wanted number of groups, >= 1.
        group_size: wanted channels per group, >= 1.

    Returns:
        A number of groups that divides ``num_channels``.

    Example:
        >>> choose_num_groups(48, 32), choose_num_groups(96, group_size=20), choose_num_groups(7, 4)
        (24, 6, 7)
    """
    check_positive_int(num_channels, "num_channels")
    if num_groups is not None and group_size is not None:
        raise ValueError(f"give num_groups ({num_groups}) or group_size ({group_size}), not both")
    divisors = [g for g in range(1, num_channels + 1) if num_channels % g == 0]
    if group_size is not None:
        check_positive_int(group_size, "group_size")
        return min(divisors, key=lambda g: (abs(num_channels / g - group_size), -g))
    wanted = check_positive_int(32 if num_groups is None else num_groups, "num_groups")
    return min(divisors, key=lambda g: (abs(g - wanted), -g))


def _replace(model: nn.Module, make: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """Replace every module ``m`` for which ``make(m)`` is not None; return the new root."""
    new = make(model)
    if new is not None:
        return new
    for name, child in list(model.named_children()):
        replaced = _replace(child, make)
        if replaced is not child:
            setattr(model, name, replaced)
    return model


def _copy_affine(src: nn.Module, dst: nn.Module) -> None:
    with torch.no_grad():
        for name in ("weight", "bias"):
            s, d = getattr(src, name, None), getattr(dst, name, None)
            if s is not None and d is not None:
                d.copy_(s.detach())
    dst.train(src.training)


def batchnorm_to_groupnorm(
    model: nn.Module,
    num_groups: int | None = None,
    group_size: int | None = None,
    eps: float | None = None,
) -> nn.Module:
    """Replace every BatchNorm of ``model`` (in place) by a GroupNorm with its affine parameters.

    The group count of each layer is :func:`choose_num_groups` of its channel count, so layers
    whose channels do not divide the requested count still convert. The GroupNorm keeps the
    BatchNorm's ``eps`` (unless ``eps`` is given), ``affine`` and bias switch, device and dtype.

    Args:
        model: the model (or a single BatchNorm).
        num_groups: wanted number of groups (default 32 when ``group_size`` is None too).
        group_size: wanted channels per group instead.
        eps: eps of the new layers; None keeps each BatchNorm's.

    Returns:
        ``model`` with its BatchNorms replaced (a new module if ``model`` itself was one).

    Example:
        >>> net = batchnorm_to_groupnorm(nn.Sequential(nn.Conv2d(3, 48, 3), nn.BatchNorm2d(48)))
        >>> net[1]
        GroupNorm(24, 48, eps=1e-05, affine=True, bias=True)
    """
    if num_groups is not None:
        check_positive_int(num_groups, "num_groups")
    if group_size is not None:
        check_positive_int(group_size, "group_size")
    if eps is not None:
        check_eps(eps)

    def make(m: Any) -> nn.Module | None:
        if not is_batchnorm(m):
            return None
        channels = int(m.num_features)
        groups = choose_num_groups(channels, num_groups, group_size)
        ref = m.weight if m.weight is not None else m.running_mean
        gn = GroupNorm(
            groups,
            channels,
            eps=float(m.eps) if eps is None else eps,
            affine=bool(m.affine),
            device=None if ref is None else ref.device,
            dtype=None if ref is None else ref.dtype,
            bias=m.bias is not None,
        )
        _copy_affine(m, gn)
        return gn

    return _replace(model, make)


def batchnorm_to_layernorm(model: nn.Module, eps: float | None = None) -> nn.Module:
    """Replace every BatchNorm of ``model`` (in place) by a :class:`ChannelLayerNorm`.

    Each position's channel vector is then normalized on its own (LayerNorm over channels),
    keeping the BatchNorm's per-channel ``weight``/``bias``, ``eps``, device and dtype.

    Args:
        model: the model (or a single BatchNorm).
        eps: eps of the new layers; None keeps each BatchNorm's.

    Returns:
        ``model`` with its BatchNorms replaced (a new module if ``model`` itself was one).

    Example:
        >>> batchnorm_to_layernorm(nn.BatchNorm2d(8))
        ChannelLayerNorm(8, eps=1e-05, affine=True, bias=True)
    """
    if eps is not None:
        check_eps(eps)

    def make(m: Any) -> nn.Module | None:
        if not is_batchnorm(m):
            return None
        ref = m.weight if m.weight is not None else m.running_mean
        ln = ChannelLayerNorm(
            int(m.num_features),
            eps=float(m.eps) if eps is None else eps,
            affine=bool(m.affine),
            device=None if ref is None else ref.device,
            dtype=None if ref is None else ref.dtype,
            bias=m.bias is not None,
        )
        _copy_affine(m, ln)
        return ln

    return _replace(model, make)


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d of ``model`` (in place) by a :class:`FrozenBatchNorm2d`.

    Covers ``torch.nn.BatchNorm2d``, ``traintech.norm.BatchNorm2d`` and ``torch.nn.SyncBatchNorm``
    (used on 4-D inputs in detectors) and traintech's ``SyncBatchNorm`` (matched by class name,
    as it lives in the distributed module); statistics and affine parameters are copied, so the
    eval output is unchanged and the output no longer depends on the batch.

    Args:
        model: the model (or a single BatchNorm2d).

    Returns:
        ``model`` with its BatchNorm2d layers frozen (a new module if ``model`` itself was one).

    Example:
        >>> freeze_batchnorm(nn.Sequential(nn.BatchNorm2d(4)))
        Sequential(
          (0): FrozenBatchNorm2d(4, eps=1e-05)
        )
    """

    def make(m: Any) -> nn.Module | None:
        frozen_types = (nn.BatchNorm2d, BatchNorm2d, nn.SyncBatchNorm)
        if isinstance(m, frozen_types) or type(m).__name__ == "SyncBatchNorm":
            return FrozenBatchNorm2d.from_batchnorm(m)
        return None

    return _replace(model, make)
