"""The private (underscore) torch APIs traintech relies on, in one place.

If a torch release moves or changes one of them, only this file changes. The ``_foreach_*``
kernels are the multi-tensor ops torch's own clipping and optimizers use; they are wrapped here
with plain signatures. Private base classes (``_ConvNd``, ``_NormBase``, ``_DropoutNd``, ...)
are re-exported under public-looking names, and private contracts (the fused optimizers'
``grad_scale``/``found_inf``, ``GradScaler``'s per-optimizer state, FSDP1's ``FlatParameter``)
are reached through functions. ``tests/test_private_api.py`` reads every other module of the
package (``_distributed.py`` may keep DTensor internals) and fails on a private torch name used
there: add a wrapper at the end of this file instead.
"""

from __future__ import annotations

import typing
from typing import Any

import torch
from torch import Tensor
from torch._utils import _flatten_dense_tensors
from torch.utils._foreach_utils import (
    _device_has_foreach_support,
    _group_tensors_by_device_and_dtype,
)


def foreach_norm(
    tensors: list[Tensor], ord: float = 2.0, dtype: torch.dtype | None = None
) -> list[Tensor]:
    """The ``ord``-norm of each tensor (0-dim tensors), in one multi-tensor kernel."""
    return list(torch._foreach_norm(tensors, ord, dtype=dtype))


def foreach_mul_(tensors: list[Tensor], scalars: Tensor | list[Tensor] | float) -> None:
    """Multiply each tensor in place by ``scalars`` (one value, or one per tensor)."""
    torch._foreach_mul_(tensors, scalars)


def foreach_copy(tensors: list[Tensor]) -> list[Tensor]:
    """New copies of ``tensors``, made by one multi-tensor kernel."""
    return list(torch._foreach_mul(tensors, 1.0))


def foreach_sub_(tensors: list[Tensor], others: list[Tensor]) -> None:
    """``tensors[i] -= others[i]`` in place, in one multi-tensor kernel."""
    torch._foreach_sub_(tensors, others)


def foreach_clamp_(tensors: list[Tensor], low: float, high: float) -> None:
    """Clamp each tensor to ``[low, high]`` in place, in two multi-tensor kernels."""
    torch._foreach_clamp_min_(tensors, low)
    torch._foreach_clamp_max_(tensors, high)


def layer_norm_backward(
    grad_out: Tensor,
    input: Tensor,
    normalized_shape: list[int],
    mean: Tensor,
    rstd: Tensor,
    weight: Tensor | None,
    *,
    grad_weight: bool,
    grad_bias: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Torch's fused LayerNorm backward kernel: ``(grad_input, grad_weight, grad_bias)``.

    ``mean``/``rstd`` are the per-row statistics the forward saved; a weight or bias gradient
    that is not asked for comes back as None.
    """
    mask = [True, grad_weight, grad_bias]
    dx, dw, db = torch.ops.aten.native_layer_norm_backward(
        grad_out, input, normalized_shape, mean, rstd, weight, None, mask
    )
    return typing.cast(Tensor, dx), dw, db


def device_has_foreach(device: torch.device) -> bool:
    """Whether torch's ``_foreach_*`` kernels support tensors on ``device``."""
    return bool(_device_has_foreach_support(device))


def group_by_device_dtype(
    tensors: list[Tensor],
) -> dict[tuple[torch.device, torch.dtype], list[Tensor]]:
    """Group tensors by (device, dtype) in one C++ call, keeping their order within each group."""
    if not tensors:
        return {}
    first = tensors[0]
    if len(tensors) == 1:
        return {(first.device, first.dtype): tensors}
    dtype = first.dtype
    if first.is_cpu and all(t.is_cpu and t.dtype is dtype for t in tensors):
        return {(first.device, dtype): list(tensors)}  # the common case, without the C++ pass
    grouped = _group_tensors_by_device_and_dtype([tensors])  # type: ignore[list-item]
    return {key: [t for t in lists[0] if t is not None] for key, (lists, _) in grouped.items()}


def flatten_dense(tensors: list[Tensor]) -> Tensor:
    """Concatenate dense tensors of one dtype into a new 1-D tensor (one C++ call)."""
    return _flatten_dense_tensors(tensors)


def record_scaler_found_inf(
    scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, found_inf: Tensor
) -> None:
    """Tell ``scaler`` that ``optimizer`` stepped with ``found_inf`` (1.0 = skipped).

    This is what ``GradScaler.step`` records for an optimizer that handles the scale itself
    (``_step_supports_amp_scaling``); it lets ``scaler.update()`` back off or grow the scale
    exactly as torch would, without a second read of the gradients to look for infs.
    """
    from torch.amp.grad_scaler import OptState

    state: dict[str, Any] = scaler._per_optimizer_states[id(optimizer)]
    state["found_inf_per_device"] = {found_inf.device: found_inf.to(torch.float32)}
    state["stage"] = OptState.STEPPED


def scaler_scale(scaler: torch.amp.GradScaler) -> Tensor:
    """The scaler's current scale as a 0-dim float32 tensor on its device, without a host sync."""
    scale = scaler._get_scale_async()
    if scale is None:
        # First use of a lazily initialised scaler: scale() has not run yet.
        return torch.tensor(scaler.get_scale(), dtype=torch.float32)
    return scale.reshape(())


def state_dtype(device: torch.device | str) -> torch.dtype:
    """float64, or float32 on devices without float64 (MPS): the dtype of accurate state.

    Adaptive clippers keep their statistics, and the norm its partial sums, in this dtype.
    """
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def fsdp1_flat_param_type() -> type | None:
    """FSDP1's ``FlatParameter`` class, or None when FSDP was never imported (never imports it).

    A ``FullyShardedDataParallel`` (v1) model exposes its parameters as flat parameters whose
    ``.grad`` is this rank's shard only.
    """
    import sys

    module = sys.modules.get("torch.distributed.fsdp._flat_param")
    return getattr(module, "FlatParameter", None) if module is not None else None


def fsdp1_module_type() -> type | None:
    """``torch.distributed.fsdp.FullyShardedDataParallel`` (v1), or None if never imported."""
    import sys

    module = sys.modules.get("torch.distributed.fsdp.fully_sharded_data_parallel")
    return getattr(module, "FullyShardedDataParallel", None) if module is not None else None


#: torch's private base class of every convolution (``Conv1d/2d/3d`` and the transposed ones).
ConvNd = torch.nn.modules.conv._ConvNd

#: torch's private base class of BatchNorm and InstanceNorm (running statistics, ``momentum``).
NormBase = torch.nn.modules.batchnorm._NormBase


def supports_amp_scaling(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` unscales and skips by itself (``_step_supports_amp_scaling``).

    torch's fused optimizers set this flag: their kernel reads ``optimizer.grad_scale`` and
    ``optimizer.found_inf`` (see :func:`fused_step_with_scale`).
    """
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def fused_step_with_scale(
    optimizer: torch.optim.Optimizer, grad_scale: Tensor, found_inf: Tensor
) -> None:
    """Step a fused optimizer that divides gradients by ``grad_scale`` and skips if ``found_inf``.

    This is the private contract between ``GradScaler`` and the optimizers with
    ``_step_supports_amp_scaling``: the attributes are set for the one ``step()`` and removed
    afterwards (also when it raises).
    """
    opt: Any = optimizer
    opt.grad_scale = grad_scale
    opt.found_inf = found_inf
    try:
        optimizer.step()
    finally:
        del opt.grad_scale
        del opt.found_inf

#: torch's private base class of ``Dropout``, ``Dropout1d/2d/3d`` and the alpha dropouts.
DropoutNd = torch.nn.modules.dropout._DropoutNd

#: torch's private base classes of the padding layers (shape-only layers).
ConstantPadNd = torch.nn.modules.padding._ConstantPadNd
ReflectionPadNd = torch.nn.modules.padding._ReflectionPadNd
ReplicationPadNd = torch.nn.modules.padding._ReplicationPadNd

#: torch's private base classes of ``BatchNorm1d/2d/3d`` and ``InstanceNorm1d/2d/3d`` (for twins
#: that subclass them, and for isinstance checks).
BatchNormBase = torch.nn.modules.batchnorm._BatchNorm
InstanceNormBase = torch.nn.modules.instancenorm._InstanceNorm
