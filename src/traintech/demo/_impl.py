"""Which implementation of each technique the demo runs, and where it came from.

The demo tests traintech's own implementations. A family that is not available in this build
(its names missing from the family's ``__all__``) is replaced by the ``torch.nn`` routine of the
same name and arguments, or for names torch lacks by a small stand-in written here from the
documented contract; :func:`implementation_sources` reports which was used, and the report says
so next to every result.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

TRAINTECH = "traintech"
TORCH = "torch.nn (traintech family not available)"
STANDIN = "demo stand-in (traintech family not available)"
MISSING = "not available (arm skipped)"


def _lecun_normal_(tensor: Tensor, generator: torch.Generator | None = None) -> Tensor:
    fan_in = tensor.shape[1] * (tensor[0][0].numel() if tensor.dim() > 2 else 1)
    with torch.no_grad():
        return tensor.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)


def _linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _next_activation(model: nn.Module) -> dict[nn.Linear, type[nn.Module] | None]:
    """Map each Linear to the type of the activation module that follows it (module order)."""
    flat = [m for m in model.modules() if not list(m.children())]
    follow: dict[nn.Linear, type[nn.Module] | None] = {}
    for i, module in enumerate(flat):
        if isinstance(module, nn.Linear):
            nxt = next(
                (type(m) for m in flat[i + 1 :] if isinstance(m, (nn.ReLU, nn.Tanh, nn.Linear))),
                None,
            )
            follow[module] = None if nxt is nn.Linear else nxt
    return follow


def _init_model(
    model: nn.Module, scheme: str = "auto", generator: torch.Generator | None = None
) -> list[str]:
    """Stand-in for ``traintech.init.init_model``: He before ReLU, Xavier otherwise, zero bias."""
    report = []
    for layer, act in _next_activation(model).items():
        if act is nn.ReLU:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu", generator=generator)
            report.append("kaiming_normal_ (ReLU follows)")
        else:
            gain = nn.init.calculate_gain("tanh") if act is nn.Tanh else 1.0
            nn.init.xavier_normal_(layer.weight, gain=gain, generator=generator)
            report.append("xavier_normal_")
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return report


def _rescale(
    layer: nn.Linear, output: Callable[[], Tensor], target_var: float, tol: float, max_iters: int
) -> None:
    for _ in range(max_iters):
        var = float(output().var())
        if abs(var - target_var) < tol or var == 0.0:
            return
        layer.weight.mul_(math.sqrt(target_var / var))


def _lsuv_(
    model: nn.Module,
    batch: Tensor,
    target_var: float = 1.0,
    tol: float = 0.1,
    max_iters: int = 10,
) -> nn.Module:
    """Stand-in for ``traintech.init.lsuv_``: orthogonal start, then per-layer variance scaling."""
    was_training = model.training
    model.eval()
    layers = _linear_layers(model)
    for layer in layers:
        nn.init.orthogonal_(layer.weight)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    with torch.no_grad():
        if isinstance(model, nn.Sequential):  # one pass, layer by layer
            h = batch
            for module in model:
                if isinstance(module, nn.Linear):
                    _rescale(module, partial(module, h), target_var, tol, max_iters)
                h = module(h)
        else:
            captured: list[Tensor] = []

            def output() -> Tensor:
                captured.clear()
                model(batch)
                return captured[-1]

            for layer in layers:
                handle = layer.register_forward_hook(lambda m, i, o: captured.append(o))
                _rescale(layer, output, target_var, tol, max_iters)
                handle.remove()
    model.train(was_training)
    return model


@dataclass(frozen=True)
class MCResult:
    """Stand-in result of Monte Carlo dropout.

    Attributes:
        mean: mean predicted probabilities, ``(n, classes)``.
        std: their standard deviation over the samples.
        entropy: predictive entropy of ``mean`` (nats), ``(n,)``.
        mutual_info: entropy minus the mean entropy of the samples (epistemic part), ``(n,)``.
    """

    mean: Tensor
    std: Tensor
    entropy: Tensor
    mutual_info: Tensor


_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def _mc_predict(
    model: nn.Module, x: Tensor, n_samples: int = 30, generator: torch.Generator | None = None
) -> MCResult:
    """Stand-in for ``traintech.dropout.mc_predict`` (dropout layers on, everything else eval)."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        for m in model.modules():
            if isinstance(m, _DROPOUT_TYPES) or "Dropout" in type(m).__name__:
                m.train()
        with torch.no_grad():
            probs = torch.stack([model(x).softmax(-1) for _ in range(n_samples)])
    finally:
        for m, mode in modes.items():
            m.training = mode
    mean = probs.mean(0)
    entropy = -(mean * mean.clamp_min(1e-12).log()).sum(-1)
    sample_entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean(0)
    return MCResult(mean, probs.std(0), entropy, entropy - sample_entropy)


_FALLBACKS: dict[tuple[str, str], tuple[str, Callable[..., Any] | type | None]] = {
    ("init", "calculate_gain"): (TORCH, nn.init.calculate_gain),
    ("init", "kaiming_normal_"): (TORCH, nn.init.kaiming_normal_),
    ("init", "xavier_normal_"): (TORCH, nn.init.xavier_normal_),
    ("init", "orthogonal_"): (TORCH, nn.init.orthogonal_),
    ("init", "lecun_normal_"): (STANDIN, _lecun_normal_),
    ("init", "init_model"): (STANDIN, _init_model),
    ("init", "lsuv_"): (STANDIN, _lsuv_),
    ("clip", "clip_grad_norm_"): (TORCH, nn.utils.clip_grad_norm_),
    ("clip", "clip_grad_value_"): (TORCH, nn.utils.clip_grad_value_),
    ("clip", "ZClip"): (MISSING, None),
    ("clip", "AGC"): (MISSING, None),
    ("norm", "BatchNorm1d"): (TORCH, nn.BatchNorm1d),
    ("norm", "GroupNorm"): (TORCH, nn.GroupNorm),
    ("norm", "LayerNorm"): (TORCH, nn.LayerNorm),
    ("dropout", "Dropout"): (TORCH, nn.Dropout),
    ("dropout", "mc_predict"): (STANDIN, _mc_predict),
}


def resolve(family: str, name: str) -> tuple[Any, str]:
    """Return ``(implementation, source)`` for ``traintech.<family>.<name>``.

    The source is :data:`TRAINTECH` when the family exports the name, else the fallback's label.
    """
    module = importlib.import_module(f"traintech.{family}")
    if name in getattr(module, "__all__", ()):
        return getattr(module, name), TRAINTECH
    source, fallback = _FALLBACKS[(family, name)]
    return fallback, source


def get(family: str, name: str) -> Any:
    """Return the implementation of ``traintech.<family>.<name>`` (or its fallback)."""
    impl, _ = resolve(family, name)
    if impl is None:
        raise LookupError(f"traintech.{family}.{name} is not available in this build")
    return impl


def implementation_sources(families: Iterable[str] | None = None) -> dict[str, str]:
    """Return ``{"traintech.<family>.<name>": source}`` for every name the demo uses."""
    wanted = set(families) if families is not None else None
    return {
        f"traintech.{family}.{name}": resolve(family, name)[1]
        for family, name in _FALLBACKS
        if wanted is None or family in wanted
    }


def entropy_of(result: Any) -> Tensor:
    """Read the predictive entropy from an ``mc_predict`` result."""
    for attr in ("entropy", "predictive_entropy"):
        if hasattr(result, attr):
            return torch.as_tensor(getattr(result, attr))
    if isinstance(result, dict):
        return torch.as_tensor(result["entropy"])
    raise TypeError(f"mc_predict returned {type(result).__name__} without an entropy field")


def mean_of(result: Any) -> Tensor:
    """Read the mean prediction from an ``mc_predict`` result."""
    if hasattr(result, "mean") and isinstance(result.mean, Tensor):
        return result.mean
    if isinstance(result, dict):
        return torch.as_tensor(result["mean"])
    raise TypeError(f"mc_predict returned {type(result).__name__} without a mean field")
