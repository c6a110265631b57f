"""GuardedOptimizer: an optimizer whose ``step()`` is the guarded step (frameworks own step)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from traintech.clip._guarded import GuardedStep, StepReport
from traintech.clip._protocol import Clipper
from traintech.clip._unwrap import unwrap_optimizer

_KEY = "traintech_guard"


class GuardedOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` whose :meth:`step` is :class:`GuardedStep`'s step.

    For any framework that takes an optimizer object and calls ``optimizer.step()`` itself
    (the Hugging Face Trainer's ``optimizers=`` / ``create_optimizer``, Lightning's
    ``configure_optimizers``, accelerate's ``prepare``): clipping, the non-finite skip and the
    clipper's state come with the optimizer, with no change to the training loop.

    ``param_groups``, ``state`` and ``defaults`` *are* the inner optimizer's (the same objects),
    so learning-rate schedulers, ``zero_grad`` and ``add_param_group`` act on the inner
    optimizer. :meth:`state_dict` is the inner optimizer's with one more key,
    ``"traintech_guard"``, holding the guard's counters and the clipper's statistics;
    :meth:`load_state_dict` restores both, bit for bit.

    Args:
        optimizer: the optimizer to guard (or a wrapper of it, unwrapped).
        clipper: a :class:`~traintech.clip.Clipper`, or None (skip non-finite steps only).
        **guard_kwargs: any other :class:`GuardedStep` argument (``scaler``, ``max_norm_skip``,
            ``max_consecutive_skips``, ``fold``), with GuardedStep's defaults.

    Raises:
        TypeError: if ``optimizer`` is not an optimizer, or as :class:`GuardedStep`.

    Example:
        >>> from traintech.clip import GuardedOptimizer, NormClip
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = GuardedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), NormClip(1.0))
        >>> model(torch.ones(1, 2)).sum().backward()
        >>> opt.step()
        >>> opt.last_report.skipped.item(), opt.steps_taken, opt.param_groups[0]["lr"]
        (False, 1, 0.1)
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer | Any,
        clipper: Clipper | None = None,
        **guard_kwargs: Any,
    ) -> None:
        inner = unwrap_optimizer(optimizer)
        self.guard = GuardedStep(optimizer, clipper, **guard_kwargs)
        super().__init__(inner.param_groups, {})
        # Share, not copy: schedulers and zero_grad act on the inner optimizer's groups.
        self.param_groups = inner.param_groups
        self.state = inner.state
        self.defaults = inner.defaults
        self.optimizer = inner
        self.last_report: StepReport | None = None

    @property
    def clipper(self) -> Clipper | None:
        """The guard's clipper."""
        return self.guard.clipper

    @property
    def steps_taken(self) -> int:
        """Updates applied so far."""
        return self.guard.steps_taken

    @property
    def steps_skipped(self) -> int:
        """Updates skipped so far."""
        return self.guard.steps_skipped

    @property
    def step_was_skipped(self) -> bool:
        """Whether the last :meth:`step` skipped the update (read by schedulers that hold)."""
        report = self.last_report
        return report is not None and bool(report.skipped)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Run ``closure`` (if given, with grad enabled), then the guarded step; return its loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.last_report = self.guard.step()
        return loss

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the inner optimizer (the groups list is shared)."""
        if not hasattr(self, "optimizer"):  # called from Optimizer.__init__: nothing to add
            return
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's ``state_dict`` plus ``"traintech_guard"`` (guard + clipper)."""
        state = self.optimizer.state_dict()
        state[_KEY] = self.guard.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the inner optimizer's and the guard's).

        Raises:
            ValueError: if ``"traintech_guard"`` is missing (a plain optimizer's state_dict).
        """
        if _KEY not in state_dict:
            raise ValueError(
                f"state_dict has no {_KEY!r} entry: it was saved from a plain optimizer, not a "
                "GuardedOptimizer; load it into the inner optimizer (guarded.optimizer) instead"
            )
        inner = {k: v for k, v in state_dict.items() if k != _KEY}
        self.optimizer.load_state_dict(inner)
        self.guard.load_state_dict(state_dict[_KEY])
        self.state = self.optimizer.state
        self.param_groups = self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The inner optimizer's ``zero_grad``."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __repr__(self) -> str:
        """``GuardedOptimizer(<inner>, clipper=...)``."""
        return f"GuardedOptimizer({self.optimizer!r}, clipper={self.guard.clipper!r})"
