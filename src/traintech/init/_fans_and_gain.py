"""Fans and gain: the two numbers every variance-scaling init is built from.

``fan_in_and_fan_out`` counts the terms a layer sums (torch's convention, or exact for the layer
that owns the weight, including ``transformers``' ``Conv1D`` whose weight is ``(in, out)``);
``calculate_gain`` is the factor a nonlinearity asks for. ``check_gain`` is the family's check of
a user ``gain``.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from .._checks import check_nonneg
from .._compat import ConvNd

__all__ = [
    "LINEAR_NAMES",
    "NONLINEARITIES",
    "calculate_gain",
    "check_gain",
    "correct_fan",
    "fan_in_and_fan_out",
    "is_conv1d_transposed_layout",
]

_MODES = ("fan_in", "fan_out", "fan_avg")


def _torch_convention(tensor: Tensor) -> tuple[int, int]:
    receptive = math.prod(tensor.shape[2:])
    return tensor.size(1) * receptive, tensor.size(0) * receptive


def fan_in_and_fan_out(tensor: Tensor, module: nn.Module | None = None) -> tuple[float, float]:
    r"""Return ``(fan_in, fan_out)`` of a weight tensor.

    Without ``module`` this is torch's convention (its private ``_calculate_fan_in_and_fan_out``),
    which reads the layout ``(out, in, *kernel)``:

    .. math::
        \text{fan\_in} = \text{size}(1) \prod_{d \ge 2} \text{size}(d), \qquad
        \text{fan\_out} = \text{size}(0) \prod_{d \ge 2} \text{size}(d)

    That is exact for ``nn.Linear`` (``(out, in)``) and ungrouped, unstrided convolutions.
    It is not for the others, so passing the owning ``module`` gives the *exact* fans: the
    average number of terms summed into one output (``fan_in``, what the forward variance sees)
    and the average number of outputs each input reaches (``fan_out``, what the backward
    variance sees). With ``K`` the kernel volume, ``S`` the stride volume and ``g`` the groups:

    ================================  ===========================  ===========================
    layer (weight layout)             fan_in                       fan_out
    ================================  ===========================  ===========================
    Linear ``(out, in)``              ``in``                       ``out``
    Conv ``(out, in/g, *k)``          ``(in/g) K``                 ``(out/g) K / S``
    ConvTranspose ``(in, out/g, *k)`` ``(in/g) K / S``             ``(out/g) K``
    ``Conv1D`` ``(in, out)`` [#]_     ``in``                       ``out``
    Embedding ``(num, dim)``          ``1`` (one row is read)      ``dim``
    MultiheadAttention in_proj        ``embed_dim``                ``embed_dim`` (per q/k/v)
    ================================  ===========================  ===========================

    Torch's own formula counts a grouped conv's fan_out ``g`` times too large, ignores stride,
    and for a transposed conv returns the fans of the forward conv it is the adjoint of (its
    ``fan_in`` is really the transposed layer's fan_out). Dilation and padding do not change
    the counts (borders aside). Other modules fall back to torch's convention.

    .. [#] ``transformers``' ``Conv1D`` (GPT-2's projections), recognised by duck-typing: class
       name ``Conv1D``, attributes ``nf``/``nx`` and weight shape ``(nx, nf)``. Torch's formula
       reads its axes the wrong way round.

    Args:
        tensor: the weight, at least 2-dimensional.
        module: the layer owning ``tensor`` (optional). Keyword-compatible extension.

    Returns:
        ``(fan_in, fan_out)``: ints in torch's convention, possibly fractional with ``module``.

    Raises:
        ValueError: if ``tensor`` has fewer than 2 dimensions, or its shape does not fit
            ``module``.

    Example:
        >>> import torch
        >>> conv_t = torch.nn.ConvTranspose2d(8, 4, kernel_size=4, stride=2)
        >>> fan_in_and_fan_out(conv_t.weight)  # torch's reading of (in, out, k, k)
        (64, 128)
        >>> fan_in_and_fan_out(conv_t.weight, conv_t)  # what the layer really sums
        (32.0, 64.0)
    """
    if tensor.dim() < 2:
        raise ValueError(
            "Fan in and fan out can not be computed for tensor with fewer than 2 dimensions "
            f"(tensor has shape {tuple(tensor.shape)})"
        )
    if module is None or isinstance(module, nn.Linear):
        return _torch_convention(tensor)
    if isinstance(module, ConvNd):
        return _conv_fans(tensor, module)
    if is_conv1d_transposed_layout(module) and tensor is getattr(module, "weight", None):
        # transformers' Conv1D: y = x @ W + b with W of shape (in, out) = (nx, nf)
        return float(tensor.size(0)), float(tensor.size(1))
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return 1.0, float(tensor.size(1))
    if isinstance(module, nn.MultiheadAttention) and tensor is module.in_proj_weight:
        return float(tensor.size(1)), float(tensor.size(0) // 3)
    return _torch_convention(tensor)


def _conv_fans(tensor: Tensor, layer: nn.Module) -> tuple[float, float]:
    module: Any = layer  # a ConvNd instance
    kernel = tuple(module.kernel_size)
    if tensor.dim() != len(kernel) + 2 or tuple(tensor.shape[2:]) != kernel:
        raise ValueError(
            f"tensor of shape {tuple(tensor.shape)} is not the weight of {type(module).__name__} "
            f"with kernel_size {kernel}; pass the module's own weight"
        )
    k = float(math.prod(kernel))
    s = float(math.prod(module.stride))
    g = module.groups
    if module.transposed:
        return tensor.size(0) / g * k / s, tensor.size(1) * k
    return tensor.size(1) * k, tensor.size(0) / g * k / s


def correct_fan(
    tensor: Tensor,
    mode: str,
    module: nn.Module | None = None,
    modes: tuple[str, ...] = _MODES,
) -> float:
    """The fan selected by ``mode`` (one of ``modes``), case-insensitive.

    Raises:
        TypeError: if ``mode`` is not a string.
        ValueError: if ``mode`` is unknown (torch's message plus the argument), or ``tensor``
            has fewer than 2 dimensions.
    """
    if not isinstance(mode, str):
        raise TypeError(f"mode must be a string, one of {list(modes)}; got {mode!r}")
    lowered = mode.lower()
    if lowered not in modes:
        raise ValueError(
            f"Mode {lowered} not supported, please use one of {list(modes)} (got mode={mode!r})"
        )
    fan_in, fan_out = fan_in_and_fan_out(tensor, module)
    if lowered == "fan_in":
        return fan_in
    if lowered == "fan_out":
        return fan_out
    return (fan_in + fan_out) / 2.0


#: Names for which the layer itself is linear (gain 1), exactly as torch lists them.
LINEAR_NAMES = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
)

#: Every nonlinearity name ``calculate_gain`` accepts (the set torch 2.13 accepts).
NONLINEARITIES = (*LINEAR_NAMES, "sigmoid", "tanh", "relu", "leaky_relu", "selu")


def calculate_gain(nonlinearity: str, param: int | float | None = None) -> float:
    r"""Return the recommended gain for a nonlinearity, as :func:`torch.nn.init.calculate_gain`.

    The gain is the factor by which a layer's weight standard deviation is multiplied so that
    the second moment of the signal is kept through the nonlinearity:

    .. math::
        \text{gain} = \begin{cases}
            1 & \text{linear, conv, sigmoid} \\
            5/3 & \tanh \\
            \sqrt{2} & \text{ReLU} \\
            \sqrt{2 / (1 + \text{negative\_slope}^2)} & \text{leaky ReLU} \\
            3/4 & \text{SELU (empirical, as torch)}
        \end{cases}

    The ReLU value is He et al. 2015, https://arxiv.org/abs/1502.01852 . For SELU the
    self-normalising fixed point (Klambauer et al. 2017, https://arxiv.org/abs/1706.02515) needs
    gain 1 (``"linear"``), which is what :func:`lecun_normal_` gives; torch's 3/4 trades that for
    gradient flow. The values, accepted names and errors are torch's own, so this is drop-in.

    Args:
        nonlinearity: one of ``linear``, ``conv1d``, ``conv2d``, ``conv3d``,
            ``conv_transpose1d``, ``conv_transpose2d``, ``conv_transpose3d``, ``sigmoid``,
            ``tanh``, ``relu``, ``leaky_relu``, ``selu``.
        param: the negative slope for ``leaky_relu`` (default 0.01); ignored otherwise.

    Returns:
        The gain as a Python number.

    Raises:
        ValueError: ``Unsupported nonlinearity <name>`` for an unknown name, or
            ``negative_slope <param> not a valid number`` for a non-numeric ``param``
            (torch's messages).

    Example:
        >>> round(calculate_gain("leaky_relu", 0.2), 6)
        1.38675
        >>> calculate_gain("tanh")
        1.6666666666666667
    """
    if nonlinearity in LINEAR_NAMES or nonlinearity == "sigmoid":
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope: float = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def check_gain(value: object, name: str = "gain") -> float:
    """``value`` as a float after checking it is a finite number >= 0.

    Torch does not check ``gain``: a negative one makes ``uniform_``/``normal_`` fail with a
    ``RuntimeError`` deep inside, or silently flips the sign of an orthogonal matrix.

    Raises:
        TypeError: if ``value`` is not a real number.
        ValueError: if ``value`` is negative, NaN or infinite (the sign carries no meaning).
    """
    return check_nonneg(value, name, allow_inf=False)


def is_conv1d_transposed_layout(module: object) -> bool:
    """Whether ``module`` is a ``transformers``-style ``Conv1D``: a Linear, weight ``(in, out)``.

    Recognised by duck-typing (no import of ``transformers``): class name ``Conv1D``, integer
    attributes ``nf`` (out features) and ``nx`` (in features), and a 2-d weight of shape
    ``(nx, nf)``. GPT-2's attention and MLP projections are such layers.
    """
    if type(module).__name__ != "Conv1D":
        return False
    nf, nx = getattr(module, "nf", None), getattr(module, "nx", None)
    weight = getattr(module, "weight", None)
    if not (isinstance(nf, int) and isinstance(nx, int) and isinstance(weight, Tensor)):
        return False
    return tuple(weight.shape) == (nx, nf)
