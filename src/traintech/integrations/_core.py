"""The guard every adapter runs in the framework's pre-step hook: clip, or skip by dropping grads.

A framework calls ``optimizer.step()`` itself, so an adapter cannot simply not call it. What it
can do, in the hook that runs after the gradients are final and before the step, is run
:class:`~traintech.clip.GuardedStep` over a step-less stand-in optimizer holding the same
parameters (unscale, measure once, never feed a non-finite norm to the clipper, clip, count)
and, when the guard skips, set every ``p.grad = None``: torch's optimizers leave a parameter
without a gradient untouched (no update, no moment or step-count change), so the framework's
own ``step()`` then does exactly what a skipped guarded step does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from traintech._compat import scaler_unscaled
from traintech.clip._guarded import GuardedStep, StepReport
from traintech.clip._protocol import Clipper, ClipResult
from traintech.clip._unwrap import unwrap_optimizer

IMPORT_HINT = "pip install 'traintech[integrations]'"


def require(module: str) -> Any:
    """Import an optional framework, or raise ``ImportError`` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - the extra is installed in the test env
        raise ImportError(f"{module} is not installed: {IMPORT_HINT}") from err


class _HeldStep(torch.optim.Optimizer):
    """An optimizer over the real one's parameters whose ``step()`` does nothing.

    The framework steps the real optimizer afterwards; this one only gives GuardedStep the
    parameters to measure and a step to (not) take.
    """

    #: The adapter unscales (or the framework did) before the guard measures: GuardedStep's
    #: "fp16 gradients without a GradScaler" warning does not apply.
    grads_unscaled_by_caller = True

    def __init__(self, params: list[Tensor]) -> None:
        super().__init__(params, {})

    def step(self, closure: Any = None) -> Any:  # noqa: D102
        return None


class GradientGuard:
    """Clip, or skip by dropping gradients, just before a framework's own ``optimizer.step()``.

    Call :meth:`before_step` in the framework's pre-step hook with the optimizer it is about to
    step (any wrapper; unwrapped) and, under fp16, its ``GradScaler``: the gradients are
    unscaled first unless the framework already did, then measured, judged and clipped by a
    :class:`~traintech.clip.GuardedStep`; on a skip every gradient is set to None.

    Args:
        clipper: the :class:`~traintech.clip.Clipper`, or None (skip non-finite steps only).
        skip: drop the gradients of a step the guard skips (False: only clip; a NaN then
            reaches the optimizer, as with plain clipping).
        **guard_kwargs: other :class:`~traintech.clip.GuardedStep` arguments
            (``max_norm_skip``, ``max_consecutive_skips``).

    Attributes:
        steps_applied: optimizer steps the guard let through.
        steps_skipped: optimizer steps whose gradients it dropped.
        last_report: the :class:`~traintech.clip.StepReport` of the latest step, or None.

    Raises:
        TypeError: for a ``clipper`` that is not a Clipper or a non-bool ``skip``.

    Example:
        >>> from traintech.clip import NormClip
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> guard = GradientGuard(NormClip(1.0))
        >>> model(torch.ones(1, 2)).sum().backward()
        >>> model.weight.grad[0, 0] = float("nan")
        >>> report = guard.before_step(opt)
        >>> bool(report.skipped), model.weight.grad is None, guard.steps_skipped
        (True, True, 1)
    """

    _version = 1

    def __init__(self, clipper: Clipper | None, skip: bool = True, **guard_kwargs: Any) -> None:
        if not isinstance(skip, bool):
            raise TypeError(f"skip must be a bool, got {type(skip).__name__} ({skip!r})")
        if clipper is not None and not isinstance(clipper, Clipper):
            raise TypeError(
                f"clipper must be a traintech.clip.Clipper (e.g. NormClip(1.0)) or None, got "
                f"{type(clipper).__name__}"
            )
        self.clipper = clipper
        self.skip = skip
        self._guard_kwargs = guard_kwargs
        self.guard: GuardedStep | None = None
        self._optimizer_id: int | None = None
        self._pending: dict[str, Any] | None = None
        self.steps_applied = 0
        self.steps_skipped = 0
        self.last_report: StepReport | None = None

    def _guard_for(self, optimizer: torch.optim.Optimizer) -> GuardedStep:
        if self._optimizer_id is not None and self._optimizer_id != id(optimizer):
            raise ValueError(
                f"this GradientGuard was built for another optimizer; got a second one "
                f"({type(optimizer).__name__}): use one guard (one callback) per optimizer"
            )
        if self.guard is None:
            self._optimizer_id = id(optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"]]
            self.guard = GuardedStep(_HeldStep(params), self.clipper, **self._guard_kwargs)
            if self._pending is not None:
                self.guard.load_state_dict(self._pending)
                self._pending = None
        return self.guard

    def before_step(
        self, optimizer: Any, scaler: torch.amp.GradScaler | None = None
    ) -> StepReport:
        """Unscale (once), measure, clip or skip the gradients ``optimizer`` is about to apply."""
        real = unwrap_optimizer(optimizer)
        if scaler is not None and scaler.is_enabled() and not scaler_unscaled(scaler, real):
            scaler.unscale_(real)
        guard = self._guard_for(real)
        report = guard.step()
        skipped = bool(report.skipped)
        if skipped and self.skip:
            for group in real.param_groups:
                for p in group["params"]:
                    p.grad = None
        self.steps_skipped += int(skipped)
        self.steps_applied += int(not skipped)
        self.last_report = report
        return report

    def clip_result(self) -> ClipResult | None:
        """The latest step as a :class:`~traintech.clip.ClipResult` for the Monitor.

        Also on a non-finite step, where the clipper was not consulted: the norm, ``coef`` 1,
        the threshold ``inf`` and ``skip`` True, so the Monitor records the skip.
        """
        report = self.last_report
        if report is None:
            return None
        if report.clip is not None:
            return ClipResult(report.clip.norm, report.clip.coef, report.clip.threshold,
                              report.skipped)
        inf = torch.full((), math.inf, device=report.norm.device)
        return ClipResult(report.norm, report.coef, inf, report.skipped)

    def metrics(self, prefix: str = "traintech/") -> dict[str, Tensor]:
        """The latest step's ``norm``, ``coef``, ``threshold`` and ``skipped`` as 0-dim tensors."""
        report = self.last_report
        if report is None:
            return {}
        out = {
            prefix + "norm": report.norm.detach().float(),
            prefix + "coef": report.coef.detach().float(),
            prefix + "skipped": report.skipped.detach().float(),
        }
        if report.clip is not None:
            out[prefix + "threshold"] = report.clip.threshold.detach().float()
        return out

    def state_dict(self) -> dict[str, Any]:
        """Counts, the guard's counters and the clipper's statistics."""
        guard = self._pending if self.guard is None else self.guard.state_dict()
        return {
            "_version": self._version,
            "steps_applied": self.steps_applied,
            "steps_skipped": self.steps_skipped,
            "guard": guard,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the guard's part when the guard is built, if not yet).

        Raises:
            ValueError: for another ``_version``.
        """
        check_version(state_dict, self._version, "GradientGuard")
        self.steps_applied = int(state_dict["steps_applied"])
        self.steps_skipped = int(state_dict["steps_skipped"])
        self._pending = restore_or_hold(self.guard, state_dict["guard"], self._pending)


def check_version(state_dict: dict[str, Any], expected: int, owner: str) -> None:
    """Raise ``ValueError`` unless ``state_dict["_version"]`` is ``expected`` (``owner``'s version).

    Raises:
        ValueError: naming the version found and the one ``owner`` expects.
    """
    version = state_dict.get("_version")
    if version != expected:
        raise ValueError(f"state_dict has _version {version!r}; {owner} expects {expected}")


def restore_or_hold(
    guard: GuardedStep | None,
    state: dict[str, Any] | None,
    pending: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """Load a saved guard ``state`` into ``guard``, or hold it until the guard is built.

    Returns:
        What the caller keeps pending: ``state`` when ``guard`` is not built yet, else the
        unchanged ``pending`` (also when there is no saved ``state``).
    """
    if state is None:
        return pending
    if guard is None:
        return state
    guard.load_state_dict(state)
    return pending


class GuardCounts:
    """The ``steps_applied``/``steps_skipped`` properties of an adapter holding a ``guard``."""

    guard: GradientGuard

    @property
    def steps_applied(self) -> int:
        """Optimizer steps let through."""
        return self.guard.steps_applied

    @property
    def steps_skipped(self) -> int:
        """Optimizer steps whose gradients were dropped."""
        return self.guard.steps_skipped
