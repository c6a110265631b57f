"""Loud skipping for :class:`traintech.clip.GuardedStep`: warnings, reasons and AMP checks."""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from traintech.clip._protocol import ClipResult

#: Default of ``GuardedStep(max_consecutive_skips=...)``: finite, so a run that skips every
#: step stops instead of training nothing.
DEFAULT_MAX_CONSECUTIVE_SKIPS = 50
#: Default of ``GuardedStep(warn_every=...)``.
DEFAULT_WARN_EVERY = 100


class SkippedStepWarning(UserWarning):
    """Emitted by :class:`~traintech.clip.GuardedStep` when it skips an optimizer update.

    The first skip warns at once, naming the reason; later skips are counted and summarised at
    most once every ``warn_every`` calls of the guarded step.
    """


def skip_reason(norm: float, max_norm_skip: float | None, clip: ClipResult | None) -> str:
    """Why a step was skipped, in words, from the host values of its report."""
    if not math.isfinite(norm):
        return (
            f"the gradient norm is non-finite ({norm!r}): check the data and the loss for "
            "NaN/Inf, lower the learning rate, or use a GradScaler under fp16"
        )
    if max_norm_skip is not None and norm > max_norm_skip:
        return (
            f"the gradient norm {norm:.4g} is over max_norm_skip={max_norm_skip:g}: lower the "
            "learning rate, or raise max_norm_skip if such norms are normal for this model"
        )
    if clip is not None and bool(clip.skip):
        return (
            f"the clipper flagged a spike (norm {norm:.4g}, threshold "
            f"{float(clip.threshold):.4g}) and its skip_factor asks to skip it"
        )
    return f"the update was skipped (norm {norm:.4g})"


class SkipWarner:
    """Warn at the first skipped step, then at most once every ``every`` calls, with counts.

    Args:
        every: minimum number of calls between two warnings; None: never warn.
    """

    def __init__(self, every: int | None) -> None:
        self.every = every
        self._last_warned: int | None = None
        self._unreported = 0

    def observe(self, call: int, skipped: bool, reason: str | None, total: int) -> None:
        """Account for call number ``call``; warn when it was skipped and a warning is due."""
        if self.every is None or not skipped:
            return
        self._unreported += 1
        if self._last_warned is not None and call - self._last_warned < self.every:
            return
        if self._last_warned is None:
            head = f"GuardedStep skipped the optimizer update at call {call}"
        else:
            head = (
                f"GuardedStep skipped {self._unreported} more update(s) since call "
                f"{self._last_warned} ({total} skipped in all), the latest at call {call}"
            )
        warnings.warn(
            f"{head}: {reason}. (This warning repeats at most every {self.every} calls; "
            "GuardedStep(warn_every=None) silences it.)",
            SkippedStepWarning,
            stacklevel=5,
        )
        self._last_warned = call
        self._unreported = 0

    def state_dict(self) -> dict[str, int | None]:
        """When the last warning was given and how many skips it has not reported."""
        return {"last_warned": self._last_warned, "unreported": self._unreported}

    def load_state_dict(self, state: dict[str, int | None]) -> None:
        """Restore :meth:`state_dict`."""
        self._last_warned = state.get("last_warned")
        self._unreported = int(state.get("unreported") or 0)


def warn_fp16_without_scaler(grads: list[Tensor]) -> bool:
    """Warn (once per caller) when fp16 gradients are stepped without a GradScaler.

    Returns:
        True when the warning was emitted.
    """
    if not any(g.dtype == torch.float16 for g in grads):
        return False
    warnings.warn(
        "GuardedStep got float16 gradients but no enabled torch.amp.GradScaler: small "
        "gradients underflow to 0 in fp16. Train under autocast with a GradScaler and pass "
        "it: GuardedStep(optimizer, clipper, scaler=torch.amp.GradScaler()) (or use bfloat16, "
        "which needs none).",
        UserWarning,
        stacklevel=4,
    )
    return True
