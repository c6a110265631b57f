"""Reach the ``torch.optim.Optimizer`` inside the wrappers frameworks hand to user code.

Lightning passes a ``LightningOptimizer`` (the real one in ``._optimizer``), accelerate an
``AcceleratedOptimizer`` (a ``torch.optim.Optimizer`` subclass with the real one in
``.optimizer``, plus its ``scaler`` and ``gradient_state``), the Hugging Face Trainer the latter;
:class:`traintech.clip.GuardedOptimizer` keeps its inner optimizer in ``.optimizer`` too. Hooks
(``register_step_pre_hook``) and the fused fold (``grad_scale`` / ``found_inf``) must reach the
optimizer that really runs the kernel, so :class:`~traintech.clip.GuardedStep` and
:class:`~traintech.monitor.Monitor` unwrap with :func:`unwrap_optimizer`.
"""

from __future__ import annotations

from typing import Any

import torch

_ATTRS = ("optimizer", "_optimizer")
_MAX_DEPTH = 8


def _inner(obj: object) -> object | None:
    """The wrapped optimizer of ``obj`` (an ``.optimizer``/``._optimizer`` that is one), or None."""
    for attr in _ATTRS:
        inner = getattr(obj, attr, None)
        if inner is not None and inner is not obj and _is_optimizer_like(inner):
            return inner
    return None


def _is_optimizer_like(obj: object) -> bool:
    if isinstance(obj, torch.optim.Optimizer):
        return True
    return any(isinstance(getattr(obj, attr, None), torch.optim.Optimizer) for attr in _ATTRS)


def unwrap_optimizer(optimizer: object, name: str = "optimizer") -> torch.optim.Optimizer:
    """Return the innermost ``torch.optim.Optimizer`` of a chain of wrappers.

    A plain optimizer is returned as it is. A wrapper is any object whose ``optimizer`` or
    ``_optimizer`` attribute is an optimizer (or another such wrapper).

    Args:
        optimizer: a ``torch.optim.Optimizer``, a ``LightningOptimizer``, an
            ``AcceleratedOptimizer``, a :class:`~traintech.clip.GuardedOptimizer`, or any
            wrapper exposing the real one.
        name: the argument's name, for the error message.

    Raises:
        TypeError: if no ``torch.optim.Optimizer`` can be reached.

    Example:
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> class Wrapper:
        ...     def __init__(self, optimizer):
        ...         self._optimizer = optimizer
        >>> unwrap_optimizer(Wrapper(opt)) is opt
        True
    """
    current: object = optimizer
    for _ in range(_MAX_DEPTH):
        inner = _inner(current)
        if inner is None:
            break
        current = inner
    if not isinstance(current, torch.optim.Optimizer):
        raise TypeError(
            f"{name} must be a torch.optim.Optimizer or a wrapper exposing one as .optimizer or "
            f"._optimizer (LightningOptimizer, AcceleratedOptimizer), got "
            f"{type(optimizer).__name__}"
        )
    return current


def outer_wrapper(optimizer: object) -> Any:
    """``optimizer`` when it wraps another optimizer, else None (a plain optimizer)."""
    return optimizer if _inner(optimizer) is not None else None


def accelerate_sync(wrapper: Any) -> bool:
    """False only inside an ``accelerator.accumulate`` window on a non-sync micro-step.

    Reads ``wrapper.gradient_state.sync_gradients`` (accelerate's flag); any other object syncs.
    """
    state = getattr(wrapper, "gradient_state", None)
    return bool(getattr(state, "sync_gradients", True))


def wrapper_scaler(wrapper: Any) -> torch.amp.GradScaler | None:
    """The ``torch.amp.GradScaler`` a wrapper carries (accelerate's fp16 ``scaler``), or None."""
    scaler = getattr(wrapper, "scaler", None)
    return scaler if isinstance(scaler, torch.amp.GradScaler) else None


def mark_step_skipped(wrapper: Any, skipped: torch.Tensor) -> None:
    """Make ``AcceleratedOptimizer.step_was_skipped`` (and so the scheduler) see a skip.

    accelerate's ``AcceleratedScheduler`` does not step when any prepared optimizer reports
    ``step_was_skipped``, which reads ``_is_overflow``; a wrapper without it is left alone (and
    ``skipped``, a 0-dim bool tensor, is then not read: no host sync).
    """
    if wrapper is not None and hasattr(wrapper, "_is_overflow"):
        wrapper._is_overflow = bool(skipped)
