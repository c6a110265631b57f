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
