r"""Drop-in replacements for ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_``.

Same arguments, return values, coefficient and errors as torch 2.13; the norm is more accurate
(float64 accumulation of float32 row reductions, fp16/bf16 reduced in float32) and, on CPU, the
multiply is skipped when the coefficient is exactly 1 (bit-identical: ``g * 1.0 == g``).
"""

from __future__ import annotations

import math
import struct
import types
import warnings

import torch
from torch import Tensor

from traintech._compat import (
    device_has_foreach,
    foreach_clamp_,
    foreach_mul_,
    group_by_device_dtype,
)
from traintech._constants import NORM_EPS
from traintech._distributed import local_tensors, refuse_fsdp1
from traintech.clip._norm import ParamsLike, as_tensor_list, total_norm

_F32 = struct.Struct("f")

#: ``NORM_EPS`` rounded to float32, as torch adds it to a float32 norm.
_F32_EPS = _F32.unpack(_F32.pack(NORM_EPS))[0]

#: Tensors above this many elements are clamped with one ``clamp_`` pass instead of two foreach
#: passes (``clamp_min_`` then ``clamp_max_``) on CPU.
_LARGE = 1 << 16


def _params_list(parameters: ParamsLike) -> list[Tensor]:
    is_generator = isinstance(parameters, types.GeneratorType)
    params = as_tensor_list(parameters)
    refuse_fsdp1(params)
    if is_generator and len(params) == 0:
        warnings.warn(
            "`parameters` is an empty generator, no gradient clipping will occur.", stacklevel=3
        )
    return params


def _use_foreach(foreach: bool | None, device: torch.device, grads: list[Tensor]) -> bool:
    supported = device_has_foreach(device)
    if foreach and not supported:
        raise RuntimeError(
            f"foreach=True was passed, but can't use the foreach API on {device.type} tensors"
        )
    if foreach is None:
        # As torch: plain strided tensors only (subclasses such as DTensor take the loop).
        return supported and all(type(g) is Tensor and g.layout == torch.strided for g in grads)
    return bool(foreach)


def clip_coefficient(total: Tensor, max_norm: float | Tensor, eps: float = NORM_EPS) -> Tensor:
    r"""The clip coefficient :math:`\min(1, \tau / (\|g\| + \epsilon))` as a 0-dim tensor.

    Computed on the norm's device with a clamp instead of a branch, and with ``max_norm`` as a
    Python number (no host-to-device copy), so it never syncs the host.
    """
    return torch.clamp(max_norm / (total + eps), max=1.0)


def coef_for(coef: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``coef`` moved to ``device``; off the CPU also cast to the gradients' ``dtype``.

    CUDA's ``_foreach_mul_`` with a 0-dim tensor takes its fast (one launch per chunk of tensors)
    path only when the scalar has the tensors' dtype; torch's own ``clip_grad_norm_`` multiplies
    fp16/bf16 gradients by a coefficient of their dtype too. On CPU there is no such fast path and
    the float32/float64 coefficient is kept: it is more precise (an fp16 coefficient below 6.1e-5
    is subnormal).
    """
    if device.type == "cpu":
        return coef.to(device)
    return coef.to(device=device, dtype=dtype)


def _f32(x: float) -> float:
    """``x`` rounded to the nearest float32 (overflow gives inf, as in IEEE arithmetic)."""
    try:
        return float(_F32.unpack(_F32.pack(x))[0])
    except OverflowError:
        return math.copysign(math.inf, x)


def host_coefficient(total: Tensor, max_norm: float) -> float:
    """:func:`clip_coefficient` of a CPU ``total``, computed in Python, to the same bits.

    torch evaluates ``clamp(max_norm / (total + 1e-6), max=1)`` in ``total``'s dtype as
    ``reciprocal(total + 1e-6) * max_norm``. Each step is one correctly rounded IEEE operation;
    done in float64 and rounded to float32 it gives the float32 result exactly (float64 has more
    than twice float32's precision, so the double rounding is harmless for +, * and /). This
    replaces four tiny tensor operations. NaN stays NaN (as ``clamp``).
    """
    value = total.item()
    try:
        if total.dtype == torch.float32:
            coef = _f32(_f32(1.0 / _f32(value + _F32_EPS)) * _f32(max_norm))
        else:
            coef = 1.0 / (value + NORM_EPS) * max_norm
    except ZeroDivisionError:  # a norm is never -1e-6; keep IEEE semantics anyway
        coef = math.copysign(math.inf, max_norm)
    return coef if math.isnan(coef) else min(coef, 1.0)


def _scale_by_number_(
    grads: list[Tensor], coef: float, dtype: torch.dtype, foreach: bool | None
) -> None:
    """Multiply ``grads`` by the number ``coef`` (nothing to do when it is exactly 1).

    CPU groups get ``coef`` as a 0-dim CPU tensor of ``dtype`` (torch's CPU kernels multiply by
    a tensor scalar about twice as fast as by a Python number, and keep its float32 precision
    for fp16/bf16); other devices get the Python number (a kernel argument: no copy, no sync).
    """
    if coef == 1.0:
        return
    grads = local_tensors(grads)
    coef_cpu = torch.full((), coef, dtype=dtype)
    first = grads[0].dtype
    strided = torch.strided
    if foreach is not False and all(
        type(g) is Tensor and g.is_cpu and g.dtype is first and g.layout is strided for g in grads
    ):
        foreach_mul_(grads, coef_cpu)  # the common case: one group, checked in one pass
        return
    for (device, _), group in group_by_device_dtype(grads).items():
        value: Tensor | float = coef_cpu if device.type == "cpu" else coef
        if _use_foreach(foreach, device, group):
            foreach_mul_(group, value)
        else:
            for g in group:
                g.mul_(value)


@torch.no_grad()
def scale_grads_(grads: list[Tensor], coef: Tensor, foreach: bool | None = None) -> None:
    """Multiply every tensor in ``grads`` by the 0-dim ``coef`` in place, grouped by device/dtype.

    On CPU the multiply is skipped when ``coef`` is exactly 1 (reading a CPU scalar is free; on an
    accelerator the multiply always runs, so there is no host sync). Each (device, dtype) group
    off the CPU is multiplied by ``coef`` cast to that group's dtype (:func:`coef_for`), so
    CUDA's multi-tensor kernel stays on its fast path for fp16/bf16. DTensor gradients are
    scaled through their local shards.
    """
    if not grads:
        return
    grads = local_tensors(grads)
    # Reading a CPU scalar costs no device sync; multiplying by exactly 1.0 changes nothing.
    is_one = (
        coef.device.type == "cpu"
        and not torch.compiler.is_compiling()  # no host read inside a compiled graph
        and coef.item() == 1.0
    )
    for (device, dtype), group in group_by_device_dtype(grads).items():
        if is_one and device.type == "cpu":
            continue
        coef_dev = coef_for(coef, device, dtype)
        if _use_foreach(foreach, device, group):
            foreach_mul_(group, coef_dev)
        else:
            for g in group:
                g.mul_(coef_dev)


@torch.no_grad()
def clip_grad_norm_(
    parameters: ParamsLike,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> Tensor:
    r"""Clip the gradient norm of ``parameters`` in place; return the norm before clipping.

    A drop-in replacement for :func:`torch.nn.utils.clip_grad_norm_` (same arguments, same
    coefficient, same errors, same accepted inputs) with an accurate norm:

    .. math::
        \|g\|_p = \Big(\sum_i \sum_j |g_{ij}|^p\Big)^{1/p}, \qquad
        g \leftarrow g \cdot \min\Big(1, \frac{\tau}{\|g\|_p + 10^{-6}}\Big)

    Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks" (2013),
    https://arxiv.org/abs/1211.5063.

    Differences from torch: the norm is accumulated in float64 (relative error ~1e-7 where torch's
    CPU float32 reduction is off by ~1e-3 on 30M elements); fp16/bf16 gradients return a float32
    norm (torch returns fp16, which overflows to inf above 65504 and then zeroes every gradient);
    an empty gradient does not make the inf-norm raise.

    Args:
        parameters: a tensor, or an iterable of tensors, whose ``.grad`` is clipped.
        max_norm: the bound :math:`\tau` on the total norm.
        norm_type: ``p`` of the p-norm; ``inf`` (or ``"inf"``) for the max-norm.
        error_if_nonfinite: raise ``RuntimeError`` when the total norm is NaN or inf.
        foreach: use torch's multi-tensor kernels for the multiply (``None``: where supported).

    Returns:
        The total norm of the gradients before clipping (0-dim tensor).

    Example:
        >>> w = torch.zeros(2, requires_grad=True)
        >>> w.grad = torch.tensor([3.0, 4.0])
        >>> clip_grad_norm_([w], max_norm=1.0)
        tensor(5.)
        >>> w.grad
        tensor([0.6000, 0.8000])
    """
    params = _params_list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    norm_type = float(norm_type)
    total = total_norm(grads, norm_type)
    if error_if_nonfinite and bool(torch.logical_or(total.isnan(), total.isinf())):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, "
            "so it cannot be clipped. To disable this error and scale the gradients by the "
            "non-finite norm anyway, set `error_if_nonfinite=False`"
        )
    max_norm = float(max_norm)
    if not grads:
        return total
    if total.device.type == "cpu" and not torch.compiler.is_compiling():
        # Reading a CPU scalar costs no sync: the coefficient as a number, the same bits.
        _scale_by_number_(grads, host_coefficient(total, max_norm), total.dtype, foreach)
    else:
        scale_grads_(grads, clip_coefficient(total, max_norm), foreach)
    return total


@torch.no_grad()
def clip_grad_value_(
    parameters: ParamsLike, clip_value: float, foreach: bool | None = None
) -> None:
    r"""Clamp every gradient entry to ``[-clip_value, clip_value]`` in place.

    A drop-in replacement for :func:`torch.nn.utils.clip_grad_value_`:

    .. math::
        g_{ij} \leftarrow \max(-c, \min(c, g_{ij}))

    Unlike norm clipping this changes the gradient's direction whenever any entry is clamped.
    Large CPU tensors are clamped in one pass (torch makes two: ``clamp_min_`` then ``clamp_max_``).

    Args:
        parameters: a tensor, or an iterable of tensors, whose ``.grad`` is clamped.
        clip_value: the bound :math:`c`.
        foreach: use torch's multi-tensor kernels (``None``: where supported).

    Example:
        >>> w = torch.zeros(3, requires_grad=True)
        >>> w.grad = torch.tensor([-2.0, 0.5, 3.0])
        >>> clip_grad_value_([w], clip_value=1.0)
        >>> w.grad
        tensor([-1.0000,  0.5000,  1.0000])
    """
    params = as_tensor_list(parameters)
    clip_value = float(clip_value)
    clamp_grads_([p.grad for p in params if p.grad is not None], clip_value, foreach)


@torch.no_grad()
def clamp_grads_(grads: list[Tensor], clip_value: float, foreach: bool | None = None) -> None:
    """Clamp every tensor in ``grads`` to ``[-clip_value, clip_value]`` in place."""
    grads = local_tensors(grads)  # elementwise: a DTensor's shards clamp independently
    for (device, _), group in group_by_device_dtype(grads).items():
        if not _use_foreach(foreach, device, group):
            for g in group:
                g.clamp_(min=-clip_value, max=clip_value)
            continue
        if device.type == "cpu":
            for g in [g for g in group if g.numel() > _LARGE]:
                g.clamp_(min=-clip_value, max=clip_value)
            group = [g for g in group if g.numel() <= _LARGE]
            if not group:
                continue
        foreach_clamp_(group, -clip_value, clip_value)


@torch.no_grad()
def grad_norm(parameters: ParamsLike, norm_type: float = 2.0) -> Tensor:
    r"""The total ``norm_type``-norm of the gradients of ``parameters``; gradients are untouched.

    .. math::
        \|g\|_p = \Big(\sum_i \sum_j |g_{ij}|^p\Big)^{1/p}

    Same accuracy and dtype rules as :func:`clip_grad_norm_`; 0.0 when no parameter has a
    gradient. Use it for monitoring.

    Args:
        parameters: a tensor, or an iterable of tensors, whose ``.grad`` is measured.
        norm_type: ``p`` of the p-norm; ``inf`` for the max-norm.

    Example:
        >>> w = torch.zeros(2, requires_grad=True)
        >>> w.grad = torch.tensor([3.0, 4.0])
        >>> grad_norm([w])
        tensor(5.)
    """
    params = as_tensor_list(parameters)
    refuse_fsdp1(params)
    return total_norm([p.grad for p in params if p.grad is not None], float(norm_type))
