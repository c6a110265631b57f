"""Named inits for :func:`init_model` and the activation -> init choice of ``scheme="auto"``.

=====================================  ====================================================
activation after the layer             init of the layer's weight
=====================================  ====================================================
ReLU family (ReLU, GELU, SiLU, ...)    He: ``kaiming_*(a=0, nonlinearity="relu")``
LeakyReLU / PReLU / RReLU (slope a)    He: ``kaiming_*(a=slope, nonlinearity="leaky_relu")``
tanh, sigmoid family                   Xavier (gain 1)
SELU                                   LeCun
none (another layer, softmax, output)  Xavier (gain 1)
=====================================  ====================================================
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from ._activations import Activation
from ._orthogonal import orthogonal_
from ._trunc_normal import trunc_normal_
from ._variance_scaling import lecun_normal_, lecun_uniform_, variance_scaling_std
from ._xavier_kaiming import (
    kaiming_normal_,
    kaiming_std,
    kaiming_uniform_,
    xavier_normal_,
    xavier_std,
    xavier_uniform_,
)

__all__ = [
    "FAN_INITS",
    "NAMED_INITS",
    "apply_fill",
    "choose_weight_init",
    "embedding_normal",
    "fill",
    "named_init",
    "noop",
    "wrap_callable",
    "zero",
]

#: Initializer: fills a tensor in place with the given generator.
Filler = Callable[[Tensor], object]

#: Names a scheme mapping may use (besides ``"auto"``, ``"skip"`` and ``"reset_parameters"``).
NAMED_INITS = (
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "normal",
    "ones",
    "orthogonal",
    "trunc_normal",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
)
#: Named inits that need fans (parameters with at least 2 dimensions).
FAN_INITS = (
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "orthogonal",
    "xavier_normal",
    "xavier_uniform",
)


def choose_weight_init(
    act: Activation,
    distribution: str,
    weight: Tensor,
    module: nn.Module,
    generator: torch.Generator | None,
) -> tuple[str, float, Filler]:
    """The auto init for a weight layer followed by ``act``: (label, std, filler)."""
    uniform = distribution == "uniform"
    if act.family in ("relu", "leaky_relu"):
        a = act.slope if act.family == "leaky_relu" else 0.0
        nl = "leaky_relu" if act.family == "leaky_relu" else "relu"
        fn = kaiming_uniform_ if uniform else kaiming_normal_
        std = kaiming_std(weight, a, "fan_in", nl, module)
        label = f"kaiming_{distribution}(a={a:g}, fan_in, {nl})"
        return (
            label,
            std,
            partial(fn, a=a, mode="fan_in", nonlinearity=nl, generator=generator, module=module),
        )
    if act.family == "selu":
        lecun = lecun_uniform_ if uniform else lecun_normal_
        std = variance_scaling_std(weight, 1.0, "fan_in", module)
        return f"lecun_{distribution}", std, partial(lecun, generator=generator, module=module)
    xavier = xavier_uniform_ if uniform else xavier_normal_
    std = xavier_std(weight, 1.0, module)
    return f"xavier_{distribution}", std, partial(xavier, generator=generator, module=module)


def named_init(
    name: str,
    param: Tensor,
    module: nn.Module,
    act: Activation | None,
    generator: torch.Generator | None,
) -> tuple[str, float | None, Filler]:
    """A named init applied to ``param`` of ``module``: (label, std, filler)."""
    if name == "zeros":
        return "zeros", 0.0, _fill(0.0)
    if name == "ones":
        return "ones", 0.0, _fill(1.0)
    if name == "normal":
        return "normal(0, 1)", 1.0, _normal(generator)
    if name == "trunc_normal":
        return (
            "trunc_normal(std=0.02, +-2 std)",
            None,
            partial(trunc_normal_, std=0.02, a=-0.04, b=0.04, generator=generator),
        )
    if name == "orthogonal":
        rows = param.size(0)
        cols = param.numel() // max(rows, 1)
        return (
            "orthogonal",
            1.0 / math.sqrt(max(rows, cols, 1)),
            partial(orthogonal_, generator=generator),
        )
    distribution = "uniform" if name.endswith("uniform") else "normal"
    if name.startswith("kaiming"):
        if act is None or act.family not in ("relu", "leaky_relu"):
            act = Activation("relu")
        return choose_weight_init(act, distribution, param, module, generator)
    if name.startswith("lecun"):
        return choose_weight_init(Activation("selu"), distribution, param, module, generator)
    return choose_weight_init(Activation("none"), distribution, param, module, generator)


def wrap_callable(fn: Callable[..., object], generator: torch.Generator | None) -> Filler:
    """Pass ``generator=`` to a user init if it takes one."""
    try:
        takes = "generator" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes = False
    if takes and generator is not None:
        return partial(fn, generator=generator)
    return fn


def _fill(value: float) -> Filler:
    def run(t: Tensor) -> Tensor:
        with torch.no_grad():
            return t.fill_(value)

    return run


def _normal(generator: torch.Generator | None) -> Filler:
    def run(t: Tensor) -> Tensor:
        with torch.no_grad():
            return t.normal_(0.0, 1.0, generator=generator)

    return run


# --- closures that perform one planned init (planning and writing are separate steps) ---


def noop() -> None:
    return None


def apply_fill(fill: Callable[[Tensor], object], param: Tensor) -> Callable[[], None]:
    def run() -> None:
        fill(param)

    return run


def zero(param: Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            param.zero_()

    return run


def fill(param: Tensor, value: float) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            param.fill_(value)

    return run


def embedding_normal(
    module: nn.Module, param: Tensor, generator: torch.Generator | None
) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            param.normal_(0.0, 1.0, generator=generator)
            padding_idx = getattr(module, "padding_idx", None)
            if padding_idx is not None:
                param[padding_idx].zero_()

    return run
