"""Seed statistics: mean with a 95% t interval, AUROC and its bootstrap interval.

Every reference here is written from the textbook formula: the t interval
``mean ± t(0.975, n-1) · s / sqrt(n)``; the AUROC as the Mann-Whitney probability that a random
positive scores above a random negative (ties count one half); the percentile bootstrap.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

#: The 97.5% quantiles (two-sided 95%) of Student's t for 1..30 degrees of freedom.
_T975 = (
    12.706204736174694,
    4.302652729749462,
    3.1824463052837078,
    2.7764451051977934,
    2.5705818356363146,
    2.4469118511449786,
    2.364624251592784,
    2.306004135204166,
    2.262157162798205,
    2.228138851986274,
    2.200985160091639,
    2.1788128296672284,
    2.1603686564627913,
    2.144786687917804,
    2.131449545559776,
    2.1199052992212546,
    2.1098155778333156,
    2.1009220402410382,
    2.0930240544083087,
    2.085963447265864,
    2.0796138447276795,
    2.0738730679040254,
    2.0686576104190486,
    2.0638985616280245,
    2.0595385527532972,
    2.0555294386428735,
    2.0518305164802846,
    2.0484071417952454,
    2.045229642132703,
    2.0422724563012378,
)  # fmt: skip

#: Below this many seeds no interval is computed: the range of the seeds' values stands in.
MIN_SEEDS_FOR_INTERVAL = 3


@dataclass(frozen=True)
class Interval:
    """A mean with its 95% interval, and the values it came from.

    Attributes:
        mean: the mean of ``values``.
        low: lower end of the interval.
        high: upper end of the interval.
        kind: how the interval was made (``"95% t interval over 3 seeds"``, ``"bootstrap ..."``
            or ``"range of 1 seed(s), too few for an interval"``).
        values: the per-seed values (or, for a bootstrap, the per-seed point estimates).
    """

    mean: float
    low: float
    high: float
    kind: str
    values: tuple[float, ...]


def t_quantile(df: int) -> float:
    """Student's t 97.5% quantile for ``df`` degrees of freedom (normal beyond 30).

    Raises:
        ValueError: if ``df`` is not a positive integer.
    """
    if not isinstance(df, int) or df < 1:
        raise ValueError(f"df must be a positive integer, got {df!r}")
    return _T975[df - 1] if df <= len(_T975) else 1.959963984540054


def seed_interval(values: Sequence[float]) -> Interval:
    """Mean and 95% t interval of per-seed values; the seeds' range below three seeds.

    A non-finite value (a diverged run) makes the interval span it: ``inf`` stays ``inf``,
    and NaN makes the whole interval NaN, which never excludes no effect.

    Raises:
        ValueError: if ``values`` is empty.
    """
    vals = tuple(float(v) for v in values)
    if not vals:
        raise ValueError("values is empty; an interval needs at least one seed")
    n = len(vals)
    if any(math.isnan(v) for v in vals):
        return Interval(math.nan, math.nan, math.nan, f"undefined: a seed gave NaN ({n})", vals)
    if any(math.isinf(v) for v in vals):
        m = (
            math.fsum(vals) / n
            if len({math.copysign(1, v) for v in vals if math.isinf(v)}) == 1
            else math.nan
        )
        return Interval(m, min(vals), max(vals), f"range of {n} seed(s), a run diverged", vals)
    m = statistics.fmean(vals)
    if n < MIN_SEEDS_FOR_INTERVAL:
        return Interval(
            m, min(vals), max(vals), f"range of {n} seed(s), too few for an interval", vals
        )
    half = t_quantile(n - 1) * statistics.stdev(vals) / math.sqrt(n)
    return Interval(m, m - half, m + half, f"95% t interval over {n} seeds", vals)


def auroc(negatives: Tensor, positives: Tensor) -> float:
    """Probability that a random positive scores above a random negative (ties count half).

    Raises:
        ValueError: if either sample is empty.
    """
    if negatives.numel() == 0 or positives.numel() == 0:
        raise ValueError(
            f"auroc needs both samples non-empty, got {negatives.numel()} negatives and "
            f"{positives.numel()} positives"
        )
    neg = negatives.double().sort().values
    pos = positives.double()
    below = torch.searchsorted(neg, pos, side="left").double()
    at_or_below = torch.searchsorted(neg, pos, side="right").double()
    return float(((below + at_or_below) / 2).mean() / len(neg))


def bootstrap_auroc(
    negatives: Tensor,
    positives: Tensor,
    *,
    resamples: int = 1000,
    seed: int = 0,
    baseline: tuple[Tensor, Tensor] | None = None,
) -> tuple[float, float, float]:
    """AUROC (or, with ``baseline``, AUROC minus the baseline's) and its 95% percentile interval.

    Each resample draws the negatives and the positives with replacement, separately; with a
    ``baseline`` (scores of the same samples from another method) the same draw is used for both,
    so the interval is that of the paired difference.

    Returns:
        ``(estimate, low, high)``.
    """
    gen = torch.Generator().manual_seed(seed)

    def stat(ni: Tensor | None, pi: Tensor | None) -> float:
        n = negatives if ni is None else negatives[ni]
        p = positives if pi is None else positives[pi]
        value = auroc(n, p)
        if baseline is not None:
            bn, bp = baseline
            value -= auroc(bn if ni is None else bn[ni], bp if pi is None else bp[pi])
        return value

    estimate = stat(None, None)
    draws = sorted(
        stat(
            torch.randint(0, len(negatives), (len(negatives),), generator=gen),
            torch.randint(0, len(positives), (len(positives),), generator=gen),
        )
        for _ in range(resamples)
    )
    low = draws[int(0.025 * (resamples - 1))]
    high = draws[int(math.ceil(0.975 * (resamples - 1)))]
    return estimate, low, high
