"""Fan-in and fan-out of a weight tensor, optionally exact for the layer that owns it."""

from __future__ import annotations

import math

from torch import Tensor, nn

from traintech._compat import ConvNd

__all__ = ["correct_fan", "fan_in_and_fan_out"]

_MODES = ("fan_in", "fan_out", "fan_avg")


def _torch_convention(tensor: Tensor) -> tuple[int, int]:
    receptive = math.prod(tensor.shape[2:])
    return tensor.size(1) * receptive, tensor.size(0) * receptive


def fan_in_and_fan_out(tensor: Tensor, module: nn.Module | None = None) -> tuple[float, float]:
    r"""Return ``(fan_in, fan_out)`` of a weight tensor.

    Without ``module`` this is torch's convention (``torch.nn.init._calculate_fan_in_and_fan_out``),
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
    Embedding ``(num, dim)``          ``1`` (one row is read)      ``dim``
    MultiheadAttention in_proj        ``embed_dim``                ``embed_dim`` (per q/k/v)
    ================================  ===========================  ===========================

    Torch's own formula counts a grouped conv's fan_out ``g`` times too large, ignores stride,
    and for a transposed conv returns the fans of the forward conv it is the adjoint of (its
    ``fan_in`` is really the transposed layer's fan_out). Dilation and padding do not change
    the counts (borders aside). Other modules fall back to torch's convention.

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
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return 1.0, float(tensor.size(1))
    if isinstance(module, nn.MultiheadAttention) and tensor is module.in_proj_weight:
        return float(tensor.size(1)), float(tensor.size(0) // 3)
    return _torch_convention(tensor)


def _conv_fans(tensor: Tensor, module: ConvNd) -> tuple[float, float]:
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
