"""Layer-sequential unit-variance initialisation (Mishkin & Matas, 2016)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_generator_device, check_positive, check_positive_int
from ._followers import is_weight_layer
from ._orthogonal import orthogonal_
from ._profile import call_model, check_batch, first_tensor
from ._report import fmt_float, format_table

__all__ = ["LSUVRecord", "LSUVReport", "lsuv_"]


@dataclass(frozen=True)
class LSUVRecord:
    """One layer of :func:`lsuv_`: output variance after the orthogonal start and at the end."""

    name: str
    initial_var: float
    final_var: float
    iterations: int
    converged: bool


@dataclass
class LSUVReport:
    """Per-layer results of :func:`lsuv_`, in forward order; ``str()`` is a table."""

    records: list[LSUVRecord] = field(default_factory=list)
    target_var: float = 1.0
    tol: float = 0.1

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def converged(self) -> bool:
        """Whether every layer reached ``|var - target_var| < tol``."""
        return all(r.converged for r in self.records)

    def __str__(self) -> str:
        rows = [
            [
                r.name,
                fmt_float(r.initial_var),
                fmt_float(r.final_var),
                str(r.iterations),
                "yes" if r.converged else "no",
            ]
            for r in self.records
        ]
        title = f"lsuv_: target variance {self.target_var:g} +- {self.tol:g}"
        return (
            title
            + "\n"
            + format_table(
                ["layer", "var after orthogonal", "final var", "iterations", "converged"], rows
            )
        )


class _Stop(Exception):
    def __init__(self, output: Tensor) -> None:
        super().__init__()
        self.output = output


def lsuv_(
    model: nn.Module,
    batch: Any,
    target_var: float = 1.0,
    tol: float = 0.1,
    max_iters: int = 10,
    generator: torch.Generator | None = None,
) -> LSUVReport:
    r"""Layer-sequential unit-variance init: orthogonal start, then rescale each layer on data.

    Mishkin & Matas, "All you need is a good init", ICLR 2016, https://arxiv.org/abs/1511.06422 .
    Every Linear/Conv weight is first filled with a (semi-)orthogonal matrix and its bias zeroed.
    Then, layer by layer in forward order, the model is run on ``batch`` up to that layer
    (the rest of the forward pass is cut short) and its weight rescaled

    .. math::
        W \leftarrow W \sqrt{\frac{\text{target\_var}}{\operatorname{Var}(y)}}

    until :math:`|\operatorname{Var}(y) - \text{target\_var}| < \text{tol}` or ``max_iters``
    rescalings were made. :math:`\operatorname{Var}(y)` is the variance over all elements of the
    layer's output (the paper's batch variance). The passes run under ``no_grad`` in eval mode
    (no dropout noise, no BatchNorm running-stat updates); every module's own ``training`` flag
    is restored afterwards. A layer whose output variance is 0 or not finite is left as is and
    reported as not converged. A layer used twice is measured at its first call.

    Args:
        model: the model, initialised in place.
        batch: a tensor (``model(batch)``), a tuple/list (``model(*batch)``) or a dict
            (``model(**batch)``); a few hundred samples are typical.
        target_var: the output variance to reach, > 0.
        tol: the absolute tolerance on the variance, > 0.
        max_iters: the most rescalings per layer, >= 1.
        generator: the torch Generator for the orthogonal start (default: the global one).

    Returns:
        An :class:`LSUVReport` with each layer's variance before and after and the iterations.

    Raises:
        TypeError: for a non-module ``model`` or an unsupported ``batch`` type.
        ValueError: for ``target_var <= 0``, ``tol <= 0`` or ``max_iters < 1``.

    Example:
        >>> net = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 8))
        >>> x = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
        >>> lsuv_(net, x, generator=torch.Generator().manual_seed(0)).converged
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_batch(batch)
    check_generator_device(generator, list(model.parameters()))
    target_var = check_positive(target_var, "target_var")
    tol = check_positive(tol, "tol")
    max_iters = check_positive_int(max_iters, "max_iters")
    modes = {m: m.training for m in model.modules()}
    report = LSUVReport(target_var=target_var, tol=tol)
    try:
        model.eval()
        with torch.no_grad():
            layers = _forward_order(model, batch)
            for _, layer in layers:
                orthogonal_(_tensor(layer, "weight"), generator=generator)
                bias = getattr(layer, "bias", None)
                if isinstance(bias, Tensor):
                    bias.zero_()
            for name, layer in layers:
                report.records.append(
                    _fit_layer(model, batch, name, layer, target_var, tol, max_iters)
                )
    finally:
        for module, mode in modes.items():
            module.training = mode
    return report


def _tensor(module: nn.Module, name: str) -> Tensor:
    value = getattr(module, name)
    if not isinstance(value, Tensor):
        raise TypeError(f"{type(module).__name__}.{name} is not a tensor")
    return value


def _forward_order(model: nn.Module, batch: Any) -> list[tuple[str, nn.Module]]:
    order: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    handles = []
    for name, module in model.named_modules():
        if is_weight_layer(module) and isinstance(getattr(module, "weight", None), Tensor):

            def hook(mod: nn.Module, args: Any, out: Any, name: str = name) -> None:
                if id(mod) not in seen:
                    seen.add(id(mod))
                    order.append((name, mod))

            handles.append(module.register_forward_hook(hook))
    try:
        call_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return order


def _output_var(model: nn.Module, batch: Any, layer: nn.Module) -> float:
    def stop(mod: nn.Module, args: Any, out: Any) -> None:
        found = first_tensor(out)
        if found is not None:
            raise _Stop(found)

    handle = layer.register_forward_hook(stop)
    try:
        call_model(model, batch)
    except _Stop as stopped:
        return float(stopped.output.detach().double().var(unbiased=False))
    finally:
        handle.remove()
    return math.nan


def _fit_layer(
    model: nn.Module,
    batch: Any,
    name: str,
    layer: nn.Module,
    target: float,
    tol: float,
    max_iters: int,
) -> LSUVRecord:
    var = _output_var(model, batch, layer)
    initial = var
    iterations = 0
    while math.isfinite(var) and var > 0 and abs(var - target) >= tol and iterations < max_iters:
        _tensor(layer, "weight").mul_(math.sqrt(target / var))
        iterations += 1
        var = _output_var(model, batch, layer)
    converged = math.isfinite(var) and abs(var - target) < tol
    return LSUVRecord(name, initial, var, iterations, converged)
