"""Residual-branch scaling for :func:`init_model`: find the branch outputs, scale by 1/sqrt(N)."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from ._graph import Followers, is_weight_layer
from ._recurrent import Action
from ._report import InitRecord

__all__ = ["add_residual_scale", "resolve_residual"]


def resolve_residual(
    model: nn.Module,
    residual: Iterable[str | nn.Module] | None,
    followers: Followers,
) -> list[str]:
    if residual is None:
        return []
    if isinstance(residual, (str, nn.Module)):
        residual = [residual]
    modules = dict(model.named_modules())
    by_id = {id(m): n for n, m in modules.items()}
    outputs: list[str] = []
    for entry in residual:
        if isinstance(entry, nn.Module):
            if id(entry) not in by_id:
                raise ValueError("residual contains a module that is not part of model")
            matched = [by_id[id(entry)]]
        elif isinstance(entry, str):
            matched = [n for n in modules if n == entry or fnmatch.fnmatchcase(n, entry)]
            matched = [n for n in matched if not any(n.startswith(o + ".") for o in matched)]
        else:
            raise TypeError(f"residual entries must be names or modules, got {entry!r}")
        if not matched:
            raise ValueError(f"residual entry {entry!r} matches no module of model")
        for name in matched:
            out = _branch_output(name, modules, followers)
            if out is None:
                raise ValueError(f"residual entry {entry!r}: module {name!r} has no Linear/Conv")
            if out not in outputs:
                outputs.append(out)
    return outputs


def _branch_output(name: str, modules: dict[str, nn.Module], followers: Followers) -> str | None:
    if is_weight_layer(modules[name]):
        return name
    inside = [n for n in followers.order if n.startswith(name + ".") or not name]
    return inside[-1] if inside else None


def add_residual_scale(
    actions: list[Action], model: nn.Module, outputs: list[str], n: int
) -> list[Action]:
    modules = dict(model.named_modules())
    factor = 1.0 / math.sqrt(n)
    weights = {f"{o}.weight": modules[o] for o in outputs}
    scaled: list[Action] = []
    for record, run in actions:
        layer = weights.get(record.name)
        if layer is None:
            scaled.append((record, run))
            continue
        std = None if record.std is None else record.std * factor
        new = InitRecord(
            record.name,
            record.shape,
            f"{record.init} x 1/sqrt({n})",
            f"{record.reason}; residual branch output",
            std,
        )
        scaled.append((new, _then_scale(run, layer.weight, factor)))
    return scaled


def _then_scale(run: Callable[[], None], weight: Tensor, factor: float) -> Callable[[], None]:
    def both() -> None:
        run()
        with torch.no_grad():
            weight.mul_(factor)

    return both
