"""Layer-by-layer statistics of activations (and gradients) on a batch.

Also how a user batch is fed to a model (a tensor, a tuple/list of positional inputs, or a dict
of keyword inputs), shared with :func:`lsuv_`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ._report import fmt_float, format_table

__all__ = [
    "LayerStats",
    "VarianceProfile",
    "call_model",
    "check_batch",
    "first_tensor",
    "variance_profile",
]


@dataclass(frozen=True)
class LayerStats:
    r"""Statistics of one layer's output over all its elements (and of the gradient reaching it).

    Attributes:
        name: qualified module name (``"<input>"`` for the batch); a second call of the same
            module gets ``"#2"`` appended.
        kind: the module's class name.
        mean: mean of the output.
        std: standard deviation (population, ``unbiased=False``).
        second_moment: :math:`E[y^2] = \text{mean}^2 + \text{std}^2`.
        grad_mean, grad_std, grad_second_moment: the same for the gradient of the output
            (``None`` unless ``backward=True`` and a gradient reached the layer).
    """

    name: str
    kind: str
    mean: float
    std: float
    second_moment: float
    grad_mean: float | None = None
    grad_std: float | None = None
    grad_second_moment: float | None = None

    @property
    def var(self) -> float:
        """Variance of the output, ``std ** 2``."""
        return self.std**2


@dataclass
class VarianceProfile:
    """Rows of :func:`variance_profile` in forward order; ``str()`` is a table.

    Attributes:
        input: statistics of the batch itself.
        rows: one :class:`LayerStats` per leaf-module call.
    """

    input: LayerStats
    rows: list[LayerStats] = field(default_factory=list)

    def __iter__(self) -> Iterator[LayerStats]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> LayerStats:
        return self.rows[index]

    def column(self, attribute: str) -> list[float | None]:
        """One statistic for every row, e.g. ``profile.column("second_moment")`` to plot."""
        return [getattr(row, attribute) for row in self.rows]

    def __str__(self) -> str:
        rows = [
            [
                r.name,
                r.kind,
                fmt_float(r.mean),
                fmt_float(r.std),
                fmt_float(r.second_moment),
                fmt_float(r.grad_std),
                fmt_float(r.grad_second_moment),
            ]
            for r in [self.input, *self.rows]
        ]
        header = ["layer", "type", "mean", "std", "E[y^2]", "grad std", "E[g^2]"]
        return format_table(header, rows)


def variance_profile(
    model: nn.Module,
    batch: Any,
    backward: bool = False,
    generator: torch.Generator | None = None,
) -> VarianceProfile:
    r"""Run ``model`` on ``batch`` and return each leaf module's output statistics.

    For every call of a leaf module (one without children) whose output is a tensor (the first
    tensor of a tuple output), over all elements :math:`y_i`:

    .. math::
        \text{mean} = \frac{1}{n}\sum_i y_i, \quad
        \text{std} = \sqrt{\frac{1}{n}\sum_i (y_i - \text{mean})^2}, \quad
        E[y^2] = \frac{1}{n}\sum_i y_i^2

    computed in float64 (so vanishing signals down to ~1e-150 still read as nonzero, where a
    float32 square underflows below ~1e-19) and read back in one transfer. With
    ``backward=True`` a gradient :math:`g \sim \mathcal{N}(0, 1)` (from ``generator``) is fed
    into the model's output (its first tensor) and the same statistics are taken of the
    gradient w.r.t. each layer's output, via ``torch.autograd.grad`` (parameters' ``.grad`` are
    not touched). A healthy init keeps :math:`E[y^2]` and :math:`E[g^2]` of the same order at
    every depth; geometric decay or growth means vanishing or exploding signals (Glorot &
    Bengio 2010; He et al. 2015, https://arxiv.org/abs/1502.01852 ).

    The model runs in its current mode (call ``model.eval()`` first to turn dropout off);
    buffers (BatchNorm running stats) are restored afterwards. With in-place activations
    (``ReLU(inplace=True)``) the gradient of the layer before is taken after the activation.

    Args:
        model: the model.
        batch: a tensor, a tuple/list of positional inputs or a dict of keyword inputs.
        backward: also profile the gradients flowing back.
        generator: the torch Generator for the injected output gradient.

    Returns:
        A :class:`VarianceProfile` (``.input`` and ``.rows``).

    Raises:
        TypeError: for a non-module ``model`` or an unsupported ``batch`` type.
        ValueError: if ``backward=True`` and the model output is not a floating tensor.

    Example:
        >>> net = nn.Sequential(nn.Linear(64, 64), nn.ReLU())
        >>> x = torch.randn(512, 64, generator=torch.Generator().manual_seed(0))
        >>> profile = variance_profile(net, x)
        >>> [row.name for row in profile]
        ['0', '1']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_batch(batch)
    names: list[tuple[str, str]] = []
    outputs: list[Tensor] = []
    stats: list[Tensor] = []
    calls: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if any(True for _ in module.children()):
            continue

        def hook(mod: nn.Module, args: Any, out: Any, name: str = name) -> None:
            found = first_tensor(out)
            if found is None or not found.is_floating_point():
                return
            calls[name] = calls.get(name, 0) + 1
            label = name if calls[name] == 1 else f"{name}#{calls[name]}"
            names.append((label, type(mod).__name__))
            outputs.append(found)
            stats.append(_stats(found))  # now: an in-place op after this layer would change it

        handles.append(module.register_forward_hook(hook))
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    inputs = _prepare(batch, backward)
    try:
        with torch.set_grad_enabled(backward):
            input_stats = _stats(first_tensor(inputs))
            output = first_tensor(call_model(model, inputs))
            grad_stats: list[Tensor | None] = [None] * len(outputs)
            if backward:
                grad_stats = _backward(output, outputs, generator)
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for key, buf in model.named_buffers():
                buf.copy_(buffers[key])
    return _assemble(names, stats, grad_stats, input_stats)


def _prepare(batch: Any, backward: bool) -> Any:
    def leaf(t: Any) -> Any:
        if backward and isinstance(t, Tensor) and t.is_floating_point():
            return t.detach().requires_grad_(True)
        return t

    if isinstance(batch, dict):
        return {k: leaf(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(leaf(v) for v in batch)
    return leaf(batch)


def _stats(t: Tensor | None) -> Tensor:
    if t is None:
        return torch.full((3,), float("nan"))
    x = t.detach()
    x = x.double()  # float32 squares underflow to 0 once a vanishing signal is below ~1e-19
    mean = x.mean()
    second = x.square().mean()
    std = x.var(unbiased=False).clamp_min(0).sqrt()
    return torch.stack([mean, std, second]).double()


def _backward(
    output: Tensor | None, outputs: list[Tensor], generator: torch.Generator | None
) -> list[Tensor | None]:
    if output is None or not output.is_floating_point() or not output.requires_grad:
        raise ValueError(
            "backward=True needs a floating-point model output that requires grad "
            "(float parameters or a float batch)"
        )
    device = output.device if generator is None else generator.device
    grad_out = torch.randn(output.shape, generator=generator, dtype=output.dtype, device=device)
    grad_out = grad_out.to(output.device)
    targets = [t for t in outputs if t.requires_grad]
    grads = torch.autograd.grad(output, targets, grad_out, allow_unused=True) if targets else ()
    by_id = {id(t): g for t, g in zip(targets, grads, strict=True)}
    return [None if by_id.get(id(t)) is None else _stats(by_id[id(t)]) for t in outputs]


def _assemble(
    names: list[tuple[str, str]],
    stats: list[Tensor],
    grad_stats: list[Tensor | None],
    input_stats: Tensor,
) -> VarianceProfile:
    device = input_stats.device
    present = [g for g in grad_stats if g is not None]
    flat = torch.stack([t.to(device) for t in [input_stats, *stats, *present]]).tolist()
    grads = iter(flat[1 + len(stats) :])
    profile = VarianceProfile(LayerStats("<input>", "input", *flat[0]))
    for (name, kind), values, grad in zip(names, flat[1 : 1 + len(stats)], grad_stats, strict=True):
        g = next(grads) if grad is not None else [None, None, None]
        profile.rows.append(LayerStats(name, kind, *values, *g))
    return profile


# --- feeding a user batch to a model ---


def check_batch(batch: object) -> None:
    """Raise ``TypeError`` unless ``batch`` is a tensor, a tuple/list or a mapping."""
    if not isinstance(batch, (Tensor, tuple, list, Mapping)):
        raise TypeError(
            f"batch must be a Tensor, a tuple/list of positional inputs or a dict of keyword "
            f"inputs, got {type(batch).__name__}"
        )


def call_model(model: nn.Module, batch: Any) -> Any:
    """``model(batch)``, ``model(*batch)`` or ``model(**batch)``."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def first_tensor(value: Any) -> Tensor | None:
    """The first tensor in a (possibly nested) output: a tensor, tuple/list or mapping."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    return None
