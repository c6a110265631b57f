r"""The seed rate :math:`\gamma` of DropBlock: the paper's formula and the exact solution."""

from __future__ import annotations

from collections import Counter
from functools import lru_cache


def _cover_counts(size: int, block: int) -> Counter[int]:
    # How many valid block starts i in [0, size - block] cover position h: i <= h < i + block.
    return Counter(min(h, size - block) - max(0, h - block + 1) + 1 for h in range(size))


def dropped_fraction(gamma: float, block: int, height: int, width: int) -> float:
    r"""Expected dropped fraction :math:`\frac{1}{HW}\sum_{h,w} 1-(1-\gamma)^{n_{hw}}`."""
    rows, cols = _cover_counts(height, block), _cover_counts(width, block)
    total = 0.0
    for ny, cy in rows.items():
        for nx, cx in cols.items():
            total += cy * cx * (1.0 - (1.0 - gamma) ** (ny * nx))
    return total / (height * width)


def paper_rate(p: float, block: int, height: int, width: int) -> float:
    r"""The paper's :math:`\gamma = \frac{p}{s^2}\frac{HW}{(H-s+1)(W-s+1)}`, clamped to 1."""
    valid = (height - block + 1) * (width - block + 1)
    return min(1.0, p / block**2 * (height * width) / valid)


@lru_cache(maxsize=256)
def block_seed_rate(p: float, block: int, height: int, width: int, exact: bool = True) -> float:
    """The seed rate for an expected dropped fraction ``p`` (bisection when ``exact``)."""
    if not exact:
        return paper_rate(p, block, height, width)
    if p <= 0.0 or p >= 1.0:
        return min(max(p, 0.0), 1.0)
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if dropped_fraction(mid, block, height, width) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
