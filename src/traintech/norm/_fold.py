"""Fold BatchNorm into the preceding Conv/Linear for inference."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, fx, nn

from traintech.norm._convert import is_batchnorm
from traintech.norm._frozen_batch_norm import FrozenBatchNorm2d

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
             nn.ConvTranspose3d, nn.Linear)  # fmt: skip


def _bn_scale_shift(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """Per-channel (scale, shift) of an eval BatchNorm, in float64."""
    c = int(bn.num_features)  # type: ignore[arg-type]
    ref = bn.running_mean
    mean = ref.detach().double() if isinstance(ref, Tensor) else torch.zeros(c, dtype=torch.float64)
    var_t = bn.running_var
    var = var_t.detach().double() if isinstance(var_t, Tensor) else torch.ones_like(mean)
    scale = torch.rsqrt(var.clamp_min(0.0) + float(bn.eps))  # type: ignore[arg-type]
    weight, bias = getattr(bn, "weight", None), getattr(bn, "bias", None)
    if weight is not None:
        scale = scale * weight.detach().double()
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.detach().double()
    return scale, shift


def can_fold(layer: nn.Module, bn: nn.Module) -> bool:
    """Whether ``bn`` (eval) can be folded into ``layer``: channels match, statistics exist."""
    if not (is_batchnorm(bn) or isinstance(bn, FrozenBatchNorm2d)):
        return False
    if getattr(bn, "running_mean", None) is None:
        return False
    if isinstance(layer, nn.Linear):
        return layer.out_features == bn.num_features
    if isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return layer.groups == 1 and layer.out_channels == bn.num_features
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return layer.out_channels == bn.num_features
    return False


def fold_batchnorm_into(layer: nn.Module, bn: nn.Module) -> nn.Module:
    r"""A copy of ``layer`` (Conv/ConvTranspose/Linear) with the eval-mode ``bn`` folded in.

    .. math::
        s = \frac{\gamma}{\sqrt{\hat\sigma^2 + \epsilon}}, \qquad
        W' = s \odot W, \qquad b' = s\,(b - \hat\mu) + \beta

    computed in float64 and cast back to the layer's dtype, so that
    ``layer'(x) == bn.eval()(layer(x))``.

    Args:
        layer: the Conv/ConvTranspose (groups 1)/Linear producing ``bn``'s input.
        bn: a BatchNorm (torch's or ours) or FrozenBatchNorm2d with running statistics.

    Returns:
        The folded layer (a new module; the inputs are untouched).

    Example:
        >>> conv, bn = nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2).eval()
        >>> x = torch.randn(1, 1, 3, 3)
        >>> torch.allclose(fold_batchnorm_into(conv, bn)(x), bn(conv(x)), atol=1e-6)
        True
    """
    if not can_fold(layer, bn):
        raise ValueError(
            f"cannot fold {type(bn).__name__} into {type(layer).__name__}: need a Conv/Linear "
            "whose output channels match num_features and a BatchNorm with running statistics"
        )
    scale, shift = _bn_scale_shift(bn)
    folded = copy.deepcopy(layer)
    weight: Tensor = getattr(layer, "weight").detach()  # noqa: B009
    transposed = isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
    view = [1] * weight.dim()
    view[1 if transposed else 0] = -1
    new_w = weight.double() * scale.to(weight.device).view(view)
    old_b = getattr(layer, "bias", None)
    grad = bool(getattr(layer, "weight").requires_grad)  # noqa: B009
    b = old_b.detach().double() if isinstance(old_b, Tensor) else torch.zeros_like(scale)
    new_b = b * scale.to(b.device) + shift.to(b.device)
    folded.weight = nn.Parameter(new_w.to(weight.dtype), grad)
    folded.bias = nn.Parameter(new_b.to(weight.dtype), grad)
    return folded


def _fold_sequential(model: nn.Module) -> int:
    count = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            layer, bn = module._modules[first], module._modules[second]
            if layer is not None and bn is not None and can_fold(layer, bn):
                module._modules[first] = fold_batchnorm_into(layer, bn)
                module._modules[second] = nn.Identity()
                count += 1
    return count


class _Tracer(fx.Tracer):
    """torch.fx tracer that keeps traintech's layers as leaves (like torch.nn's)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if type(m).__module__.startswith("traintech."):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _fold_fx(model: nn.Module) -> fx.GraphModule:
    graph = _Tracer().trace(model)
    gm = fx.GraphModule(model, graph, type(model).__name__)
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or len(node.args) != 1:
            continue
        prev = node.args[0]
        if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        layer, bn = modules[prev.target], modules[node.target]
        if not can_fold(layer, bn):
            continue
        parent_name, _, attr = str(prev.target).rpartition(".")
        parent = gm.get_submodule(parent_name) if parent_name else gm
        setattr(parent, attr, fold_batchnorm_into(layer, bn))
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def fold_batchnorm(model: nn.Module, method: str = "auto") -> nn.Module:
    """Fold every BatchNorm that directly follows a Conv/Linear into it, for inference.

    Finds ``conv -> bn`` and ``linear -> bn`` pairs where the layer's output goes only to the
    BatchNorm, either by tracing the model with ``torch.fx`` (any model whose forward traces,
    e.g. torchvision's ResNets) or by adjacency inside ``nn.Sequential`` containers. The input
    model is not modified; the result is a copy in eval mode (an ``fx.GraphModule`` after
    tracing) whose output equals ``model.eval()``'s up to rounding. BatchNorms that cannot be
    folded (no preceding layer, shared outputs, no running statistics) are kept.

    Args:
        model: the model.
        method: ``"fx"``, ``"sequential"`` or ``"auto"`` (fx, falling back to sequential when
            the model does not trace).

    Returns:
        The folded copy, in eval mode.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
        >>> folded = fold_batchnorm(net)
        >>> x = torch.randn(2, 3, 8, 8)
        >>> torch.allclose(folded(x), net(x), atol=1e-5)
        True
    """
    if method not in ("auto", "fx", "sequential"):
        raise ValueError(f"method must be 'auto', 'fx' or 'sequential', got {method!r}")
    copied = copy.deepcopy(model).eval()
    if method != "sequential":
        try:
            return _fold_fx(copied).eval()
        except Exception:  # noqa: BLE001 - any tracing failure falls back
            if method == "fx":
                raise
    _fold_sequential(copied)
    return copied
