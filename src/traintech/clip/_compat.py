"""The private torch APIs traintech.clip relies on, in one place.

If a torch release moves one of them, only this file changes. (The lead may move these helpers
into a package-wide ``traintech/_compat.py``.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch._utils import _flatten_dense_tensors
from torch.utils._foreach_utils import (
    _device_has_foreach_support,
    _group_tensors_by_device_and_dtype,
)


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
