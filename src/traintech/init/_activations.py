r"""Which activation an operation is, and which operations leave the activation unchanged.

Used by :func:`init_model` to find the nonlinearity that follows each Linear/Conv layer.
Families (the init each implies is decided in ``_rules.py``):

- ``relu``: ReLU, ReLU6, GELU, SiLU/Swish, Mish, Hardswish, ELU, CELU, Softplus. GELU and its
  smooth kin behave like ReLU for the second moment (they pass about half the signal: for a
  unit Gaussian :math:`E[\mathrm{GELU}(x)^2] \approx 0.43` against ReLU's 0.5), so He's gain
  :math:`\sqrt 2` is the closest of the classical choices.
- ``leaky_relu`` with its slope: LeakyReLU (``negative_slope``), PReLU (its ``init``),
  RReLU (``(lower + upper) / 2``), ``F.leaky_relu``.
- ``tanh``: Tanh, Hardtanh, Softsign. ``sigmoid``: Sigmoid, Hardsigmoid, LogSigmoid.
- ``selu``: SELU.
- ``none``: anything else that consumes the output (another layer, a matmul, softmax, the
  model's output).

Transparent operations (looked through): dropout, pooling, flatten/reshape/view/permute and
friends, padding, upsampling, identity, normalization layers, residual additions, scaling and
gating products (``*``, ``/``, ``-``: the consumer of the product decides) and concatenation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from .._compat import PADDING_BASES, DropoutNd, NormBase

__all__ = ["Activation", "classify_function", "classify_module", "is_norm_module"]

_RELU = {
    "relu",
    "relu_",
    "relu6",
    "gelu",
    "silu",
    "mish",
    "hardswish",
    "elu",
    "elu_",
    "celu",
    "celu_",
    "softplus",
    "swish",
}
_LEAKY = {"leaky_relu", "leaky_relu_", "rrelu", "rrelu_"}
_TANH = {"tanh", "tanh_", "hardtanh", "hardtanh_", "softsign"}
_SIGMOID = {"sigmoid", "sigmoid_", "hardsigmoid", "logsigmoid"}
_SELU = {"selu", "selu_"}
_TRANSPARENT = {
    "flatten",
    "unflatten",
    "reshape",
    "view",
    "view_as",
    "permute",
    "transpose",
    "contiguous",
    "squeeze",
    "unsqueeze",
    "clone",
    "to",
    "float",
    "half",
    "bfloat16",
    "double",
    "type_as",
    "add",
    "add_",
    "iadd",
    "cat",
    "concat",
    "concatenate",
    "getitem",
    "pad",
    "interpolate",
    "upsample",
    "layer_norm",
    "batch_norm",
    "group_norm",
    "instance_norm",
    "rms_norm",
    "drop_path",
    "identity",
    "pixel_shuffle",
    "channel_shuffle",
    "detach",
    "mul",
    "mul_",
    "imul",
    "truediv",
    "div",
    "div_",
    "itruediv",
    "sub",
    "sub_",
    "isub",
    "neg",
}
_TRANSPARENT_PATTERN = re.compile(r"dropout|drop_path|droppath|dropblock|pool")
_NORM_NAME = re.compile(r"Norm(\d[dD])?$")
#: Activation modules from other libraries, by class name (``transformers``' ``NewGELUActivation``,
#: ``GELUActivation``, ``SiLUActivation``, timm's ``GELUTanh``...): ReLU family.
_RELU_NAME = re.compile(r"^(new|fast|quick|accurate)?(gelu|silu|swish|mish|relu)", re.IGNORECASE)

_RELU_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.ELU,
    nn.CELU,
    nn.Softplus,
)
_TANH_MODULES: tuple[type[nn.Module], ...] = (nn.Tanh, nn.Hardtanh, nn.Softsign)
_SIGMOID_MODULES: tuple[type[nn.Module], ...] = (nn.Sigmoid, nn.Hardsigmoid, nn.LogSigmoid)
_TRANSPARENT_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.Upsample,
    nn.PixelShuffle,
    nn.ChannelShuffle,
    DropoutNd,
    *PADDING_BASES,
)


@dataclass(frozen=True)
class Activation:
    """The activation family found after a layer, its leaky slope, and where it was seen."""

    family: str  # "relu", "leaky_relu", "tanh", "sigmoid", "selu" or "none"
    slope: float = 0.0
    source: str = ""

    def describe(self) -> str:
        """A short phrase for reports: ``'followed by ReLU (net.1)'``."""
        if self.family == "none":
            return f"no activation follows ({self.source})" if self.source else "no activation"
        return f"followed by {self.source}"


def is_norm_module(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer (torch's, or any class named ``*Norm*``)."""
    norm_types = (
        NormBase,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.RMSNorm,
        nn.LocalResponseNorm,
    )
    return isinstance(module, norm_types) or bool(_NORM_NAME.search(type(module).__name__))


def classify_module(module: nn.Module, name: str) -> Activation | None:
    """Activation of a module, ``Activation('transparent')`` if it passes it through, else None."""
    label = f"{type(module).__name__} '{name}'"
    if isinstance(module, nn.LeakyReLU):
        return Activation("leaky_relu", float(module.negative_slope), label)
    if isinstance(module, nn.PReLU):
        return Activation("leaky_relu", float(module.init), label)
    if isinstance(module, nn.RReLU):
        return Activation("leaky_relu", (module.lower + module.upper) / 2.0, label)
    if isinstance(module, _RELU_MODULES):
        return Activation("relu", 0.0, label)
    if isinstance(module, nn.SELU):
        return Activation("selu", 0.0, label)
    if isinstance(module, _TANH_MODULES):
        return Activation("tanh", 0.0, label)
    if isinstance(module, _SIGMOID_MODULES):
        return Activation("sigmoid", 0.0, label)
    if isinstance(module, _TRANSPARENT_MODULES) or is_norm_module(module):
        return Activation("transparent", 0.0, label)
    lowered = type(module).__name__.lower()
    if _TRANSPARENT_PATTERN.search(lowered):
        return Activation("transparent", 0.0, label)
    if _RELU_NAME.match(lowered) and not any(True for _ in module.parameters()):
        return Activation("relu", 0.0, label)
    return None


def classify_function(
    target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Activation | None:
    """Like :func:`classify_module` for a function or method call (by its name)."""
    raw = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    name = raw.strip("_").lower() if raw.startswith("__") else raw.lower()
    label = f"{raw}()"
    if name in _LEAKY:
        slope = kwargs.get("negative_slope", args[1] if len(args) > 1 else 0.01)
        if name.startswith("rrelu"):
            lower = kwargs.get("lower", args[1] if len(args) > 1 else 1.0 / 8)
            upper = kwargs.get("upper", args[2] if len(args) > 2 else 1.0 / 3)
            slope = (lower + upper) / 2.0 if _is_number(lower) and _is_number(upper) else 0.2
        return Activation("leaky_relu", float(slope) if _is_number(slope) else 0.01, label)
    for family, names in (("relu", _RELU), ("tanh", _TANH), ("sigmoid", _SIGMOID), ("selu", _SELU)):
        if name in names:
            return Activation(family, 0.0, label)
    if name in _TRANSPARENT or _TRANSPARENT_PATTERN.search(name):
        return Activation("transparent", 0.0, label)
    return None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
