"""What ``Monitor.step(clip=...)`` accepts: a clipper's ClipResult or a GuardedStep's report."""

from __future__ import annotations

from typing import Any

import torch

from traintech.clip._protocol import ClipResult


def coerce_clip(clip: Any) -> tuple[ClipResult | None, str | None]:
    """``clip`` as a :class:`ClipResult`, and the clipper's class name when it is known.

    A :class:`~traintech.clip.StepReport` (what ``GuardedStep.step()`` returns) becomes the
    ClipResult of the step as it was applied: its norm and coefficient, the clipper's threshold
    (infinite without a clipper) and its ``skipped`` flag.

    Raises:
        TypeError: for anything else but None.
    """
    from traintech.clip._guarded import StepReport

    if clip is None:
        return None, None
    if isinstance(clip, ClipResult):
        return clip, None
    if isinstance(clip, StepReport):
        inner = clip.clip
        threshold = (
            inner.threshold if inner is not None
            else torch.full((), torch.inf, dtype=clip.norm.dtype, device=clip.norm.device)
        )
        result = ClipResult(norm=clip.norm, coef=clip.coef, threshold=threshold, skip=clip.skipped)
        return result, getattr(clip, "clipper", None)
    raise TypeError(
        "clip must be a traintech.clip.ClipResult (what a clipper returns) or the StepReport "
        f"that GuardedStep.step() returns, got {type(clip).__name__}"
    )


#: How much larger than the stepped gradients the clipper's norm may be before the monitor
#: calls it a scaled-gradient mistake (a clipper that sees a subset of the parameters measures
#: less, never more).
SCALE_MISMATCH = 1.5


def scaled_clip_ratio(record: dict[str, Any]) -> float | None:
    """How much larger the norm the clipper measured is than the gradients that were stepped.

    A uniform clipper scales the gradients by ``coef``, so after the step the monitor should
    see ``grad_norm == clip.norm * coef``. Under AMP, a clipper called before
    ``scaler.unscale_(optimizer)`` measured gradients still multiplied by the scaler's scale
    (and ``scaler.step`` unscaled them afterwards): the ratio is then that scale. Returns None
    when the record cannot tell (no clip, a zero or missing norm).
    """
    clip = record.get("clip") or {}
    norm, coef, seen = clip.get("norm"), clip.get("coef"), record.get("grad_norm")
    if not norm or not coef or not seen:
        return None
    return float(norm) * float(coef) / float(seen)


def warn_scaled_clip(ratio: float) -> None:
    """Warn that a clipper measured AMP-scaled gradients (see :func:`scaled_clip_ratio`)."""
    import warnings

    warnings.warn(
        f"the clipper measured a gradient norm {ratio:.3g}x the one the optimizer stepped "
        "with: it probably ran on GradScaler-scaled gradients, so its threshold was compared "
        "with norms multiplied by the loss scale. Call scaler.unscale_(optimizer) before "
        "clipping, or let traintech.clip.GuardedStep(optimizer, clipper, scaler=scaler) do "
        "the unscaling, clipping and stepping. (If you change the gradients after the clipper "
        "on purpose, ignore this warning.)",
        UserWarning,
        stacklevel=3,
    )
