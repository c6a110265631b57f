"""Spike detection: the z-score of a scalar against its exponential moving average."""

from __future__ import annotations

import math
from typing import Any


class SpikeDetector:
    r"""Flag values far above the recent level of a scalar series (loss, gradient norm).

    The first ``warmup`` finite values only collect statistics: their mean and (population)
    variance start the averages. After that, each finite value :math:`x_t` gets a z-score
    against the exponential moving mean :math:`\mu` and variance :math:`\sigma^2` of the values
    before it, and is a spike when :math:`z_t > z_{thresh}`:

    .. math::
        s_t = \max\big(\sqrt{\sigma^2_{t-1}},\ r\,|\mu_{t-1}|,\ 10^{-12}\big), \qquad
        z_t = \frac{x_t - \mu_{t-1}}{s_t}

    The averages are then updated with :math:`\tilde x_t = \min(x_t, \mu_{t-1} + z_{thresh}
    s_t)` (a spike is winsorized, so one outlier barely moves them, while a lasting change of
    level is adopted over a few tens of steps):

    .. math::
        \delta = \tilde x_t - \mu_{t-1}, \qquad
        \mu_t = \mu_{t-1} + (1 - \alpha)\,\delta, \qquad
        \sigma^2_t = \alpha\,\big(\sigma^2_{t-1} + (1 - \alpha)\,\delta^2\big)

    (the incremental exponentially weighted variance, Finch 2009). Only upward deviations are
    spikes. A non-finite value is reported as a spike with ``z = nan`` and leaves the
    statistics untouched. The floor :math:`r|\mu|` (``rel_floor``) keeps a nearly constant
    series from flagging tiny wiggles.

    This is the z-score rule of ZClip (Kumar et al. 2025, https://arxiv.org/abs/2504.02507),
    used here to report events rather than to clip. Statistics are Python floats, so a
    resumed detector continues bit-for-bit.

    Args:
        alpha: smoothing factor of the moving averages, in (0, 1). Default: 0.98.
        z_thresh: z-score above which a value is a spike, > 0. Default: 4.0.
        warmup: number of finite values used to start the statistics, >= 2. Default: 20.
        rel_floor: floor of the standard deviation relative to :math:`|\mu|`, >= 0.
            Default: 0.01.

    Example:
        >>> det = SpikeDetector(warmup=3)
        >>> [det.update(x)[0] for x in [1.0, 1.1, 0.9, 1.05, 50.0]]
        [False, False, False, False, True]
    """

    _version: int = 1

    def __init__(
        self,
        alpha: float = 0.98,
        z_thresh: float = 4.0,
        warmup: int = 20,
        rel_floor: float = 0.01,
    ) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha ({alpha}) must lie in (0, 1), e.g. 0.98")
        if not z_thresh > 0.0:
            raise ValueError(f"z_thresh ({z_thresh}) must be > 0, e.g. 4.0")
        if isinstance(warmup, bool) or not isinstance(warmup, int):
            raise TypeError(f"warmup must be an int, got {type(warmup).__name__}")
        if warmup < 2:
            raise ValueError(f"warmup ({warmup}) must be >= 2 (a variance needs two values)")
        if not rel_floor >= 0.0:
            raise ValueError(f"rel_floor ({rel_floor}) must be >= 0")
        self.alpha = float(alpha)
        self.z_thresh = float(z_thresh)
        self.warmup = warmup
        self.rel_floor = float(rel_floor)
        self.count = 0
        self.mean = 0.0
        self.var = 0.0
        self._warm: list[float] = []

    @property
    def ready(self) -> bool:
        """Whether the warm-up is over and values get z-scores."""
        return self.count >= self.warmup

    @property
    def std(self) -> float:
        """The standard deviation used for the next z-score (with its floors)."""
        return max(math.sqrt(self.var), self.rel_floor * abs(self.mean), 1e-12)

    def update(self, value: float) -> tuple[bool, float]:
        """Score ``value`` against the statistics so far, then fold it in.

        Returns:
            ``(is_spike, z)``: ``z`` is 0.0 during warm-up and nan for a non-finite value
            (which counts as a spike).
        """
        x = float(value)
        if not math.isfinite(x):
            return True, math.nan
        if self.count < self.warmup:
            self._warm.append(x)
            self.count += 1
            if self.count == self.warmup:
                n = len(self._warm)
                mean = sum(self._warm) / n
                self.mean = mean
                self.var = sum((w - mean) ** 2 for w in self._warm) / n
                self._warm = []
            return False, 0.0
        std = self.std
        z = (x - self.mean) / std
        spike = z > self.z_thresh
        used = min(x, self.mean + self.z_thresh * std) if spike else x
        delta = used - self.mean
        self.mean += (1.0 - self.alpha) * delta
        self.var = self.alpha * (self.var + (1.0 - self.alpha) * delta * delta)
        self.count += 1
        return spike, z

    def state_dict(self) -> dict[str, Any]:
        """Settings and statistics, as plain Python values."""
        return {
            "_version": self._version,
            "alpha": self.alpha,
            "z_thresh": self.z_thresh,
            "warmup": self.warmup,
            "rel_floor": self.rel_floor,
            "count": self.count,
            "mean": self.mean,
            "var": self.var,
            "warm": list(self._warm),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (validated before anything changes)."""
        version = state_dict.get("_version")
        if version != self._version:
            raise ValueError(
                f"state_dict has _version {version!r}; SpikeDetector expects {self._version}"
            )
        fresh = SpikeDetector(
            state_dict["alpha"], state_dict["z_thresh"], state_dict["warmup"],
            state_dict["rel_floor"],
        )
        self.alpha, self.z_thresh = fresh.alpha, fresh.z_thresh
        self.warmup, self.rel_floor = fresh.warmup, fresh.rel_floor
        self.count = int(state_dict["count"])
        self.mean = float(state_dict["mean"])
        self.var = float(state_dict["var"])
        self._warm = [float(w) for w in state_dict["warm"]]
