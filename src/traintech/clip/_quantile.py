"""QuantileClip (AutoClip): clip to a quantile of the recent gradient norms."""

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
)
from traintech.clip._protocol import ClipResult


def window_quantile(ordered: Tensor, count: Tensor, quantile: float) -> Tensor:
    r"""``numpy.quantile`` (method ``"linear"``) of the ``min(count, len(ordered))`` valid norms.

    ``ordered`` holds the valid norms in ascending order followed by ``+inf`` in the unused
    slots. With :math:`s` the valid norms, :math:`n` their number, :math:`v = (n-1)q`,
    :math:`j = \lfloor v \rfloor`, :math:`\gamma = v - j`:

    .. math::
        Q = \begin{cases}
            s_{n-1} & v \ge n - 1\\
            s_j + (s_{j+1} - s_j)\gamma & \gamma < 1/2\\
            s_{j+1} - (s_{j+1} - s_j)(1 - \gamma) & \text{otherwise}
        \end{cases}

    the same arithmetic as numpy's ``_lerp``; :math:`Q = \infty` when :math:`n = 0`. Two
    gathers, no sort and no host sync.
    """
    size = ordered.numel()
    n = count.clamp(max=size)
    virtual = (n - 1).to(ordered.dtype) * quantile
    lower = torch.floor(virtual)
    gamma = virtual - lower
    below = lower.to(torch.int64).clamp(0, size - 1).view(1)
    above = (below + 1).clamp(max=size - 1)
    last = (n - 1).clamp(0, size - 1).view(1)
    a, b = ordered.index_select(0, below)[0], ordered.index_select(0, above)[0]
    diff = b - a
    lerp = torch.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)
    value = torch.where(virtual >= n - 1, ordered.index_select(0, last)[0], lerp)
    return torch.where(n == 0, ordered.new_full((), math.inf), value)


def replace_sorted(ordered: Tensor, positions: Tensor, old: Tensor, new: Tensor) -> Tensor:
    """``ordered`` (ascending) with one copy of ``old`` removed and ``new`` inserted, in O(len).

    ``positions`` is ``arange(len(ordered))``. Entry ``k`` of the result is ``new`` at the
    insertion point ``j``, else ``ordered[k + 1]`` between the removal point ``i`` and ``j``,
    ``ordered[k - 1]`` between ``j`` and ``i``, and ``ordered[k]`` elsewhere: three selects,
    no sort.
    """
    removed_at = torch.searchsorted(ordered, old.view(1))[0]
    inserted_at = torch.searchsorted(ordered, new.view(1))[0] - (old < new).to(torch.int64)
    from_next = (positions < inserted_at) & (positions >= removed_at)
    from_prev = (positions > inserted_at) & (positions <= removed_at)
    following = torch.cat([ordered[1:], ordered[-1:]])
    preceding = torch.cat([ordered[:1], ordered[:-1]])
    shifted = torch.where(from_next, following, torch.where(from_prev, preceding, ordered))
    return torch.where(positions == inserted_at, new, shifted)


class QuantileClip(AdaptiveClipper):
    r"""AutoClip: clip the gradient norm to a quantile of the last ``window`` norms.

    With :math:`h` the (at most ``window``) finite norms before step :math:`t`:

    .. math::
        \tau_t = Q_q(h) \ (\infty \text{ when } h = \emptyset),\qquad
        g_t \leftarrow g_t \min\!\Big(1, \frac{\tau_t}{\|g_t\| + 10^{-6}}\Big),\qquad
        h \leftarrow h \cup \{\|g_t\|\}

    where :math:`Q_q` is numpy's default (linear) quantile and :math:`h` keeps the raw,
    unclipped norm, as the paper does (a quantile is robust to one spike). The first step is
    not clipped. The norms live in a fixed ring buffer plus a sorted copy that each step
    updates in :math:`O(\text{window})` (one value out, one in; no sort), so the cost of a step
    neither grows with the number of steps nor depends on the values (the ``autoclip`` package
    re-stacks its history and sorts it in ``torch.quantile`` every step).

    Paper: Seetharaman et al., "AutoClip: Adaptive Gradient Clipping for Source Separation
    Networks", https://arxiv.org/abs/2007.14469 (``quantile`` 0.1 there for audio networks;
    0.9 clips only the top tenth of norms). The threshold equals the ``autoclip`` package's
    ``QuantileClip(global_threshold=True)`` up to its float32 rounding. Note: the paper's
    algorithm appends the current norm to the history *before* taking the quantile; like the
    ``autoclip`` package, we judge a step against the earlier norms only, so a spike cannot
    raise its own threshold and the first step is not clipped. A norm is a *spike*
    when it exceeds :math:`\tau_t` (a fraction about :math:`1-q` of steps by design), which is
    also the boundary of ``skip_factor``. A non-finite norm changes nothing.

    Args:
        quantile: :math:`q` in [0, 1].
        window: number of recent norms kept; >= 1.
        skip_factor: spike policy; None never asks to skip, :math:`k \ge 1` marks
            ``result.skip`` when :math:`\|g_t\| > k\,\tau_t`.

    Example:
        >>> import torch
        >>> from traintech.clip import QuantileClip
        >>> clipper = QuantileClip(quantile=0.5, window=3)
        >>> w = torch.zeros(1, requires_grad=True)
        >>> for g in (1.0, 2.0, 3.0, 4.0, 9.0):
        ...     w.grad = torch.tensor([g])
        ...     result = clipper([w])
        >>> result.threshold.item(), w.grad
        (3.0, tensor([3.0000]))
    """

    def __init__(
        self, quantile: float = 0.9, window: int = 1000, *, skip_factor: float | None = None
    ) -> None:
        """Validate the settings (before any state exists) and create an empty window."""
        quantile = check_interval("quantile", quantile, 0.0, 1.0, "[]")
        window = check_count("window", window)
        super().__init__(skip_factor)
        self.quantile, self.window = quantile, window
        self._state = {
            "history": torch.full((window,), math.inf, dtype=torch.float64),  # ring buffer
            "sorted": torch.full((window,), math.inf, dtype=torch.float64),  # same, ascending
            "count": torch.zeros((), dtype=torch.int64),  # finite norms seen
        }
        self._positions = torch.arange(window)

    def _settings(self) -> dict[str, Any]:
        return {"quantile": self.quantile, "window": self.window, "skip_factor": self.skip_factor}

    @property
    def history(self) -> Tensor:
        """The norms in the window, oldest first (1-D float64)."""
        count = int(self._state["count"])
        ring = self._state["history"]
        if count <= self.window:
            return ring[:count].clone()
        start = count % self.window
        return torch.cat([ring[start:], ring[:start]])

    def decide(self, norm: Tensor) -> ClipResult:
        """Clip ``norm`` to the window's quantile, then add it to the window.

        A non-finite ``norm`` changes nothing and gets ``coef`` 1 and ``skip`` True.
        """
        g = self._follow(norm)
        state = self._state
        if self._positions.device != g.device:
            self._positions = self._positions.to(g.device)
        finite = torch.isfinite(g)
        threshold = window_quantile(state["sorted"], state["count"], self.quantile)
        spike = finite & (g > threshold)
        coef = torch.clamp(threshold / (g + NORM_EPS), max=1.0)
        slot = (state["count"] % self.window).view(1)
        ring, ordered = state["history"], state["sorted"]
        old = ring.index_select(0, slot)[0]
        value = torch.where(finite, g, old)  # a non-finite norm replaces old by itself
        state["history"] = ring.index_copy(0, slot, value.view(1))
        state["sorted"] = replace_sorted(ordered, self._positions, old, value)
        state["count"] = state["count"] + finite.to(torch.int64)
        return self._result(norm, coef, threshold, spike, threshold, finite)
