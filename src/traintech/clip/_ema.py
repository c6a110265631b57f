"""EMAClip: clip to a multiple of the exponential moving average of past gradient norms."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from traintech._constants import NORM_EPS
from traintech.clip._adaptive import (
    AdaptiveClipper,
    check_count,
    check_interval,
    check_positive,
)
from traintech.clip._protocol import ClipResult


class EMAClip(AdaptiveClipper):
    r"""Clip the gradient norm to ``factor`` times the moving average of the earlier norms.

    With :math:`n` finite norms seen before step :math:`t` and :math:`m` the EMA accumulator:

    .. math::
        \tau_t = \begin{cases}
            \infty & n < \text{warmup\_steps}\\
            f\,\dfrac{m}{1 - \beta^{n}} & \text{otherwise}
        \end{cases}
        \qquad
        g_t \leftarrow g_t \min\!\Big(1, \frac{\tau_t}{\|g_t\| + 10^{-6}}\Big)

    .. math::
        m \leftarrow \beta m + (1 - \beta)\min(\|g_t\|, \tau_t),\qquad n \leftarrow n + 1

    :math:`m / (1 - \beta^n)` is the bias-corrected EMA (as in Adam,
    https://arxiv.org/abs/1412.6980): a weighted mean of the norms seen so far, exact from the
    first step. The threshold at step :math:`t` uses only the norms before :math:`t`, so a spike
    is judged against the history, not against itself. The EMA takes in the *clipped* norm, so
    one spike raises the threshold by at most a factor :math:`1 + (1-\beta)(f-1)/(1-\beta^{n+1})`
    (about 2% with the defaults) while a lasting rise in the gradient scale is still followed
    (the threshold can grow by that factor per step). During the warm-up
    nothing is clipped and the raw norms fill the average.

    This is the adaptive clipping of the training-techniques guide ("clip by norm" with a
    threshold that follows the run). A norm is a *spike* when it exceeds :math:`\tau_t`; the
    spike boundary of ``skip_factor`` is :math:`\tau_t`. A non-finite norm changes nothing.

    Args:
        factor: :math:`f`, the threshold as a multiple of the average norm; > 0 (typically
            1.5 to 3; 2 clips only norms twice the recent average).
        beta: EMA decay in [0, 1); the average spans about :math:`1/(1-\beta)` steps.
        warmup_steps: number of finite norms averaged before clipping starts; >= 1.
        skip_factor: spike policy; None never asks to skip, :math:`k \ge 1` marks
            ``result.skip`` when :math:`\|g_t\| > k\,\tau_t`.

    Example:
        >>> import torch
        >>> from traintech.clip import EMAClip
        >>> clipper = EMAClip(factor=2.0, beta=0.9, warmup_steps=2)
        >>> w = torch.zeros(2, requires_grad=True)
        >>> for g in ([3.0, 4.0], [4.0, 3.0], [30.0, 40.0]):
        ...     w.grad = torch.tensor(g)
        ...     result = clipper([w])
        >>> result.norm.item(), round(result.threshold.item(), 4), round(result.coef.item(), 4)
        (50.0, 10.0, 0.2)
    """

    def __init__(
        self,
        factor: float = 2.0,
        beta: float = 0.98,
        warmup_steps: int = 25,
        *,
        skip_factor: float | None = None,
    ) -> None:
        """Validate the settings (before any state exists) and create empty statistics."""
        factor = check_positive("factor", factor)
        beta = check_interval("beta", beta, 0.0, 1.0, "[)")
        warmup_steps = check_count("warmup_steps", warmup_steps)
        super().__init__(skip_factor)
        self.factor, self.beta, self.warmup_steps = factor, beta, warmup_steps
        self._state = {
            "ema": torch.zeros((), dtype=torch.float64),  # biased accumulator m
            "beta_pow": torch.ones((), dtype=torch.float64),  # beta ** n
            "count": torch.zeros((), dtype=torch.int64),  # n, finite norms seen
        }

    def _settings(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "beta": self.beta,
            "warmup_steps": self.warmup_steps,
            "skip_factor": self.skip_factor,
        }

    @property
    def average(self) -> Tensor:
        """Bias-corrected EMA of the norms so far (0-dim float64; NaN before the first)."""
        return self._state["ema"] / (1.0 - self._state["beta_pow"])

    def decide(self, norm: Tensor) -> ClipResult:
        """Judge ``norm`` against the average, fold it into the average, return the coefficient.

        A non-finite ``norm`` changes nothing and gets ``coef`` 1 and ``skip`` True.
        """
        g = self._follow(norm)
        state = self._state
        finite = torch.isfinite(g)
        ready = state["count"] >= self.warmup_steps
        threshold = torch.where(ready, self.factor * self.average, g.new_full((), math.inf))
        spike = ready & finite & (g > threshold)
        coef = torch.clamp(threshold / (g + NORM_EPS), max=1.0)
        absorbed = torch.minimum(g, threshold)
        new_ema = self.beta * state["ema"] + (1.0 - self.beta) * absorbed
        state["ema"] = torch.where(finite, new_ema, state["ema"])
        state["beta_pow"] = torch.where(finite, state["beta_pow"] * self.beta, state["beta_pow"])
        state["count"] = state["count"] + finite.to(torch.int64)
        return self._result(norm, coef, threshold, spike, threshold, finite)
