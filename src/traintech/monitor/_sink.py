"""Send the Monitor's numbers to a framework's own logger: flat ``{name: float}`` metrics."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

#: A sink: called as ``sink(metrics, step)`` after every logged step.
Sink = Callable[[dict[str, float], int], Any]


def record_metrics(record: dict[str, Any], prefix: str = "monitor/") -> dict[str, float]:
    """Flatten one Monitor record into the scalars a logger takes (non-finite ones left out).

    Keys: ``loss``, ``grad_norm``, ``loss_z``, ``grad_z``, ``clip/norm``, ``clip/coef``,
    ``clip/threshold``, ``clip/skip`` (0/1) and ``events`` (how many this step), each with
    ``prefix``. Per-layer values stay in the Monitor's own logs (a logger keyed by tag would
    get dozens of tags per step).

    Example:
        >>> record_metrics({"step": 3, "loss": 2.0, "grad_norm": None, "events": []})
        {'monitor/loss': 2.0, 'monitor/events': 0.0}
    """
    out: dict[str, float] = {}
    for key in ("loss", "grad_norm", "loss_z", "grad_z"):
        value = record.get(key)
        if value is not None and math.isfinite(value):
            out[prefix + key] = float(value)
    clip = record.get("clip")
    if clip is not None:
        for key in ("norm", "coef", "threshold"):
            value = clip.get(key)
            if value is not None and math.isfinite(value):
                out[f"{prefix}clip/{key}"] = float(value)
        out[f"{prefix}clip/skip"] = float(bool(clip.get("skip")))
    out[prefix + "events"] = float(len(record.get("events", [])))
    return out


def check_sink(sink: object) -> Sink | None:
    """Return ``sink`` if None or callable; raise ``TypeError`` naming it otherwise."""
    if sink is not None and not callable(sink):
        raise TypeError(
            f"sink must be a callable sink(metrics: dict[str, float], step: int) or None, got "
            f"{type(sink).__name__}"
        )
    return sink
