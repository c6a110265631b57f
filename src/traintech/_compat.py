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


# --- dropout: dispatch gates and checkpoint replay (appended by the dropout family) ---------


def is_functorch_wrapped(t: Tensor) -> bool:
    """Whether ``t`` is wrapped by a ``torch.func`` transform (vmap, grad, jvp, jacrev, ...)."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(t))


def tracing_or_mode_active() -> bool:
    """Whether a tracer or mode would record the ops run now (FX, make_fx/export, a mode).

    True under ``torch.fx`` symbolic tracing, under any ``TorchDispatchMode`` (proxy tracing,
    fake tensors, functionalization, ``FlopCounterMode``, ...) and any ``TorchFunctionMode``
    other than torch's always-on device context.
    """
    from torch.fx import _symbolic_trace
    from torch.overrides import _get_current_function_mode_stack
    from torch.utils._device import DeviceContext
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    is_fx_tracing = getattr(
        _symbolic_trace, "is_fx_symbolic_tracing", _symbolic_trace.is_fx_tracing
    )
    if is_fx_tracing() or _get_current_dispatch_mode() is not None:
        return True
    return any(not isinstance(m, DeviceContext) for m in _get_current_function_mode_stack())


def current_graph_task_id() -> int:
    """The id of the autograd backward running now on this thread, or -1 outside backward."""
    return int(torch._C._current_graph_task_id())


def checkpoint_region() -> tuple[object, bool] | None:
    """The innermost ``torch.utils.checkpoint`` region running now, and whether it recomputes.

    Returns ``(region, recomputing)``: ``region`` is an object that is the same in the original
    forward and in every recomputation of one checkpointed call (the reentrant variant's
    autograd ``ctx``, the non-reentrant variant's ``_CheckpointFrame``), ``recomputing`` is
    True inside the recomputation. None outside checkpointed code. Found by walking the
    Python stack for torch's checkpoint frames.
    """
    import sys

    import torch.utils.checkpoint as ckpt

    ckpt_file = ckpt.__file__
    fwd_code = ckpt.CheckpointFunction.forward.__code__
    bwd_code = ckpt.CheckpointFunction.backward.__code__
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_filename == ckpt_file:
            local = frame.f_locals
            if code is fwd_code and "ctx" in local:
                return local["ctx"], False
            if code is bwd_code and "ctx" in local:
                return local["ctx"], True
            if code.co_name == "unpack_hook" and "frame" in local:
                return local["frame"], True
            if code.co_name == "checkpoint" and local.get("gen") is not None:
                gen_frame = getattr(local["gen"], "gi_frame", None)
                region = None if gen_frame is None else gen_frame.f_locals.get("new_frame")
                if region is not None:
                    return region, False
        frame = frame.f_back  # type: ignore[assignment]
    return None


def default_mps_generator() -> torch.Generator | None:
    """Torch's default MPS generator (``torch.mps`` exposes no ``default_generators``)."""
    getter = getattr(torch.mps, "_get_default_mps_generator", None)
    return None if getter is None else getter()


def functorch_transform_active() -> bool:
    """Whether a ``torch.func`` transform (vmap, grad, jvp, ...) is running now."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def forward_ad_active() -> bool:
    """Whether a forward-mode AD dual level is open (``torch.autograd.forward_ad.dual_level``)."""
    return bool(torch.autograd.forward_ad._current_level >= 0)


def quantization_fusers() -> dict[tuple[type, ...], Any]:
    """Torch's default module-type tuple -> fuser method table of ``fuse_modules``."""
    from torch.ao.quantization import fuser_method_mappings

    return dict(fuser_method_mappings._DEFAULT_OP_LIST_TO_FUSER_METHOD)


def register_quantization_fuser(op_types: tuple[type, ...], method: Any) -> None:
    """Add ``op_types -> method`` to the table ``torch.ao.quantization.fuse_modules`` looks up.

    torch matches exact module types there, so subclasses of its layers need their own entries.
    """
    from torch.ao.quantization import fuser_method_mappings

    fuser_method_mappings._DEFAULT_OP_LIST_TO_FUSER_METHOD.setdefault(op_types, method)


def scaler_unscaled(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``scaler.unscale_(optimizer)`` already ran in this iteration.

    ``GradScaler.unscale_`` raises when called twice between ``update()``s; frameworks (Lightning's
    ``MixedPrecision``) unscale for some optimizers and not others, so an adapter asks first.
    """
    from torch.amp.grad_scaler import OptState

    state = scaler._per_optimizer_states.get(id(optimizer))
    return state is not None and state["stage"] is not OptState.READY


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
PADDING_BASES: tuple[type[torch.nn.Module], ...] = (
    ConstantPadNd,
    ReflectionPadNd,
    ReplicationPadNd,
)

#: torch's private base classes of ``BatchNorm1d/2d/3d`` and ``InstanceNorm1d/2d/3d``: the
#: classes torch's utilities (``convert_sync_batchnorm``, ``swa_utils.update_bn``, quantization
#: fusion) test ``isinstance`` against; our twins (and ``GhostBatchNorm``) derive from them.
BatchNormBase = torch.nn.modules.batchnorm._BatchNorm
InstanceNormBase = torch.nn.modules.instancenorm._InstanceNorm
