"""Per-layer norm clipping: each tensor, or each module's parameters, to its own bound."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from traintech._checks import check_nonneg, check_norm_type
from traintech._compat import foreach_mul_, foreach_norm
from traintech._constants import NORM_EPS
from traintech._distributed import any_dtensor, local_tensors, refuse_fsdp1, refuse_fsdp1_module
from traintech.clip._functional import clip_coefficient, coef_for, scale_grads_
from traintech.clip._norm import ROW, total_norms

NamedParams = nn.Module | Mapping[str, Tensor] | Iterable[tuple[str, Tensor]]

_BY = ("tensor", "module")


def _named(named_parameters: NamedParams) -> list[tuple[str, Tensor]]:
    items: list[tuple[str, Tensor]]
    if isinstance(named_parameters, nn.Module):
        refuse_fsdp1_module(named_parameters)
        items = list(named_parameters.named_parameters())
    elif isinstance(named_parameters, Mapping):
        items = list(named_parameters.items())
    elif isinstance(named_parameters, Tensor):
        raise TypeError(
            "named_parameters must be a Module, a mapping name -> tensor or (name, tensor) "
            "pairs, got a single Tensor (wrap it: {'w': tensor})"
        )
    else:
        items = list(named_parameters)
    for index, item in enumerate(items):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Tensor)):
            raise TypeError(
                f"named_parameters[{index}] is {type(item).__name__} ({item!r:.60}); expected a "
                "(name, tensor) pair, e.g. model.named_parameters()"
            )
    refuse_fsdp1([p for _, p in items])
    return items


def _layer_groups(items: list[tuple[str, Tensor]], by: str) -> dict[str, list[Tensor]]:
    groups: dict[str, list[Tensor]] = {}
    for name, p in items:
        if p.grad is None:
            continue
        key = name if by == "tensor" else name.rpartition(".")[0]
        groups.setdefault(key, []).append(p.grad)
    return groups


def _bounds(max_norm: float | Mapping[str, float], names: Iterable[str]) -> dict[str, float]:
    if isinstance(max_norm, Mapping):
        return {n: check_nonneg(max_norm[n], f"max_norm[{n!r}]") for n in names if n in max_norm}
    bound = check_nonneg(max_norm, "max_norm")
    return {n: bound for n in names}


@torch.no_grad()
def clip_grad_norm_per_layer_(
    named_parameters: NamedParams,
    max_norm: float | Mapping[str, float],
    norm_type: float = 2.0,
    by: str = "tensor",
) -> dict[str, Tensor]:
    r"""Clip each layer's gradient to its own norm bound, in place; return the norms before.

    For every layer :math:`l` (a parameter tensor with ``by="tensor"``, or all parameters of one
    module with ``by="module"``):

    .. math::
        g_l \leftarrow g_l \cdot \min\Big(1, \frac{\tau_l}{\|g_l\|_p + 10^{-6}}\Big)

    Each layer keeps its own direction, but the direction of the whole gradient changes when
    some layers are clipped and others are not (global clipping keeps it). Per-layer clipping
    stops one layer's spike (embeddings, the output head) from shrinking every other layer's
    update. The per-layer variant is described in "Training Techniques" guides; Keras' ``clipnorm``
    and Optax's ``clip_by_block_rms`` are per-tensor forms.

    Args:
        named_parameters: a module, a mapping name -> parameter, or ``(name, parameter)`` pairs
            (e.g. ``model.named_parameters()``). Parameters without ``.grad`` are ignored.
        max_norm: one bound for every layer, or a mapping layer name -> bound; layers missing
            from the mapping are measured but not clipped.
        norm_type: ``p`` of the p-norm, in ``(0, inf]``.
        by: ``"tensor"`` (key: the parameter's name) or ``"module"`` (key: the owning module's
            dotted name, ``""`` for parameters of the root module).

    Returns:
        ``{layer name: 0-dim norm before clipping}`` in parameter order.

    Raises:
        ValueError: for a negative/NaN ``max_norm``, a bad ``norm_type`` or an unknown ``by``.
        TypeError: if an entry is not a (name, tensor) pair.

    Example:
        >>> lin = torch.nn.Linear(2, 1)
        >>> lin.weight.grad = torch.tensor([[3.0, 4.0]])
        >>> lin.bias.grad = torch.tensor([0.5])
        >>> clip_grad_norm_per_layer_(lin, max_norm=1.0)
        {'weight': tensor(5.), 'bias': tensor(0.5000)}
        >>> lin.weight.grad, lin.bias.grad
        (tensor([[0.6000, 0.8000]]), tensor([0.5000]))
    """
    norm_type = check_norm_type(norm_type)
    if by not in _BY:
        raise ValueError(f"by must be one of {_BY}, got {by!r}")
    groups = _layer_groups(_named(named_parameters), by)
    bounds = _bounds(max_norm, groups)
    norms = _layer_norms(groups, norm_type)
    _scale_layers(groups, norms, bounds)
    return dict(zip(groups, norms, strict=True))


def _scale_layers(
    groups: dict[str, list[Tensor]], norms: list[Tensor], bounds: dict[str, float]
) -> None:
    """Multiply each bounded layer by its coefficient, without a host sync.

    The bounds stay Python numbers (no host-to-device copy): the layers sharing a bound get their
    coefficients from one vectorised ``clamp(bound / (norm + 1e-6), max=1)``; then each dtype
    group of gradients is multiplied by its coefficients (cast to its dtype off the CPU, see
    :func:`~traintech.clip._functional.coef_for`) in one multi-tensor call. Layers without a
    bound are not touched.
    """
    bounded = [
        (bounds[name], grads, norm)
        for (name, grads), norm in zip(groups.items(), norms, strict=True)
        if name in bounds and bounds[name] != math.inf  # an infinite bound leaves the layer as is
    ]
    if not bounded:
        return
    devices = {g.device for _, grads, _ in bounded for g in grads}
    if len(devices) > 1:
        for bound, grads, norm in bounded:
            scale_grads_(grads, clip_coefficient(norm, bound))
        return
    by_bound: dict[float, list[int]] = {}
    for i, (bound, _, _) in enumerate(bounded):
        by_bound.setdefault(bound, []).append(i)
    order: list[int] = []
    pieces: list[Tensor] = []
    for bound, members in by_bound.items():
        stacked = torch.stack([bounded[i][2].to(torch.float64) for i in members])
        pieces.append(torch.clamp(bound / (stacked + NORM_EPS), max=1.0))
        order.extend(members)
    coefs = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    position = {layer: k for k, layer in enumerate(order)}
    by_dtype: dict[torch.dtype, tuple[list[Tensor], list[int]]] = {}
    for i, (_, grads, _) in enumerate(bounded):
        for g in local_tensors(grads):
            tensors, where = by_dtype.setdefault(g.dtype, ([], []))
            tensors.append(g)
            where.append(position[i])
    device = next(iter(devices))
    for dtype, (tensors, where) in by_dtype.items():
        cast = coef_for(coefs, device, dtype).unbind()
        foreach_mul_(tensors, [cast[k] for k in where])


def _layer_norms(groups: dict[str, list[Tensor]], norm_type: float) -> list[Tensor]:
    """Norm of each group; one multi-tensor call for the many small single-tensor layers."""
    if any_dtensor([g for grads in groups.values() for g in grads]):
        return total_norms(list(groups.values()), norm_type)  # one packed all-reduce
    norms: list[Tensor | None] = [None] * len(groups)
    small: list[int] = []
    rest: list[int] = []
    for i, grads in enumerate(groups.values()):
        g = grads[0]
        plain = g.dtype in (torch.float32, torch.float64) and g.is_contiguous()
        if len(grads) == 1 and 0 < g.numel() <= ROW and plain and g.layout == torch.strided:
            small.append(i)  # short float32 reductions are already accurate
        else:
            rest.append(i)  # an empty tensor's inf-norm is 0 there (torch's kernel refuses it)
    values = list(groups.values())
    if rest:
        for i, norm in zip(rest, total_norms([values[i] for i in rest], norm_type), strict=True):
            norms[i] = norm
    if small:
        tensors = [values[i][0] for i in small]
        for i, norm in zip(small, foreach_norm(tensors, norm_type), strict=True):
            norms[i] = norm
    return [n for n in norms if n is not None]
