"""ZClip: clip gradient-norm spikes detected by a z-score against EMA statistics."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from traintech._constants import NORM_EPS
from traintech.clip._adaptive import (
    AdaptiveClipper,
    check_choice,
    check_count,
    check_interval,
    check_positive,
)
from traintech.clip._protocol import ClipResult

_MODES = ("zscore", "percentile")
_CLIP_OPTIONS = ("adaptive_scaling", "mean")


def _python_pow(x: Tensor, exponent: Tensor) -> Tensor:
    """``x ** exponent`` elementwise, rounded as CPython's ``float ** float`` (C ``pow``) on CPU.

    torch turns ``pow(x, 2.0)`` into ``x * x`` and ``pow(x, 0.5)`` into ``sqrt(x)`` and
    vectorises other exponents with SLEEF; glibc's ``pow`` differs from all three in about one
    case in a thousand. A tensor exponent over a strided operand makes TensorIterator take its
    scalar loop, which calls ``std::pow``: the same function CPython calls.
    """
    if x.dim() == 0:
        return torch.pow(x, exponent)
    spread = x.new_empty(2 * x.numel())[::2]
    spread.copy_(x)
    return torch.pow(spread, exponent)


class ZClip(AdaptiveClipper):
    r"""ZClip: adaptive clipping of gradient-norm spikes by z-score (Kumar et al., 2025).

    During the first ``warmup_steps`` finite norms only ``max_grad_norm`` applies (as
    ``torch.nn.utils.clip_grad_norm_``); their population mean and variance then start two EMAs.
    At every later step, with :math:`\mu, \sigma^2` the EMAs before step :math:`t`:

    .. math::
        z_t = \frac{\|g_t\| - \mu}{\sigma + \epsilon},\qquad
        c_t = \begin{cases}
            \lambda\,\big(\mu + z_\text{thresh}^2\,\sigma / z_t\big)
                & \text{zscore, adaptive\_scaling, } z_t > z_\text{thresh}\\
            \mu & \text{zscore, mean, } z_t > z_\text{thresh}\\
            \mu + z_\text{thresh}\,\sigma
                & \text{percentile, } \|g_t\| > \mu + z_\text{thresh}\,\sigma\\
            \|g_t\| & \text{otherwise (no spike)}
        \end{cases}

    with :math:`\lambda` = ``clip_factor`` (the code computes
    :math:`\mu + z_\text{thresh}\sigma/(z_t/z_\text{thresh})`). The bound is
    :math:`\tau_t = \min(c_t, \text{max\_grad\_norm})`, the gradients are multiplied by
    :math:`\tau_t / (\|g_t\| + 10^{-6})` when :math:`\|g_t\| > \tau_t`, and the EMAs take in
    :math:`c_t` (the clipped norm on a spike):

    .. math::
        \mu \leftarrow \alpha\mu + (1-\alpha)\,c_t,\qquad
        \sigma^2 \leftarrow \alpha\sigma^2 + (1-\alpha)\,(c_t - \mu)^2

    where the variance uses the *updated* mean. With ``skip_update_on_spike`` a spike leaves
    the EMAs as they were.

    Paper: "ZClip: Adaptive Spike Mitigation for LLM Pre-Training",
    https://arxiv.org/abs/2504.02507. On the same norms this clips exactly as the ``zclip``
    package 1.0.0 (its arithmetic is reproduced in float64, bit for bit on CPU; on CUDA
    ``pow`` may round one ulp differently), with the package's defaults. Unlike the package:
    the statistics are tensors on the gradients' device (no host sync),
    they survive :meth:`state_dict`, a non-finite norm never enters them, and ``skip_factor``
    can ask the guarded step to skip the update of a spike (see :mod:`traintech.clip._adaptive`).

    Args:
        alpha: EMA smoothing factor in (0, 1); larger remembers longer.
        z_thresh: z-score (zscore mode) or number of standard deviations (percentile mode)
            above which a norm is a spike; > 0.
        max_grad_norm: hard cap on the norm, applied at every step, warm-up included (the
            package's default, 1.0). During the warm-up it is the only protection: a run that
            explodes in its first ``warmup_steps`` steps is held at this norm. Raise it when the
            healthy gradient norm of your model is well above 1 (check ``result.norm``, or the
            monitor's ``grad_norm``), otherwise every step is clipped and the learning rate is
            silently lowered; ``None`` makes the clipper purely adaptive (no protection in the
            warm-up).
        warmup_steps: number of finite norms collected before the EMAs start; >= 1.
        mode: ``"zscore"`` or ``"percentile"`` (always clip to :math:`\mu + z\sigma`).
        clip_option: in zscore mode, ``"adaptive_scaling"`` or ``"mean"`` (ignored in
            percentile mode, where None is accepted as in the package).
        clip_factor: :math:`\lambda`, multiplier of the adaptive-scaling bound; > 0.
        skip_update_on_spike: if True a spike does not update the EMAs (zclip's option; the
            optimizer still steps).
        eps: :math:`\epsilon` added to :math:`\sigma` in the z-score; >= 0.
        skip_factor: spike policy; None never asks to skip, :math:`k \ge 1` marks
            ``result.skip`` when a spike's norm exceeds :math:`k(\mu + z_\text{thresh}(\sigma +
            \epsilon))` (zscore) or :math:`k(\mu + z_\text{thresh}\sigma)` (percentile).

    Example:
        >>> import torch
        >>> from traintech.clip import ZClip
        >>> clipper = ZClip(warmup_steps=3, max_grad_norm=10.0)  # cap above the healthy norm 5
        >>> w = torch.zeros(2, requires_grad=True)
        >>> for g in ([3.0, 4.0], [4.0, 3.0], [0.0, 5.0], [30.0, 40.0]):
        ...     w.grad = torch.tensor(g)
        ...     result = clipper([w])
        >>> round(result.norm.item(), 3), round(result.threshold.item(), 3)
        (50.0, 5.0)
        >>> w.grad
        tensor([3., 4.])
    """

    def __init__(
        self,
        alpha: float = 0.97,
        z_thresh: float = 2.5,
        max_grad_norm: float | None = 1.0,
        warmup_steps: int = 25,
        mode: str = "zscore",
        clip_option: str | None = "adaptive_scaling",
        clip_factor: float = 1.0,
        skip_update_on_spike: bool = False,
        *,
        eps: float = 1e-6,
        skip_factor: float | None = None,
    ) -> None:
        """Validate the settings (before any state exists) and create empty statistics."""
        alpha = check_interval("alpha", alpha, 0.0, 1.0, "()")
        z_thresh = check_positive("z_thresh", z_thresh)
        if max_grad_norm is not None:
            max_grad_norm = check_positive("max_grad_norm", max_grad_norm)
        warmup_steps = check_count("warmup_steps", warmup_steps)
        mode = check_choice("mode", mode, _MODES)
        if clip_option is None and mode == "percentile":  # the zclip package allows this
            clip_option = "adaptive_scaling"
        clip_option = check_choice("clip_option", clip_option, _CLIP_OPTIONS)
        clip_factor = check_positive("clip_factor", clip_factor)
        if not isinstance(skip_update_on_spike, bool):
            raise TypeError(
                f"skip_update_on_spike must be a bool, got {type(skip_update_on_spike).__name__}"
            )
        eps = check_interval("eps", eps, 0.0, math.inf, "[)")
        super().__init__(skip_factor)
        self.alpha, self.z_thresh, self.max_grad_norm = alpha, z_thresh, max_grad_norm
        self.warmup_steps, self.mode, self.clip_option = warmup_steps, mode, clip_option
        self.clip_factor, self.skip_update_on_spike, self.eps = (
            clip_factor,
            skip_update_on_spike,
            eps,
        )
        f64 = torch.float64
        self._state = {
            "buffer": torch.zeros(warmup_steps, dtype=f64),  # warm-up norms, in order
            "total": torch.zeros((), dtype=f64),  # their running (sequential) sum
            "count": torch.zeros((), dtype=torch.int64),  # finite norms seen
            "mean": torch.zeros((), dtype=f64),
            "var": torch.zeros((), dtype=f64),
        }

    def _settings(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "z_thresh": self.z_thresh,
            "max_grad_norm": self.max_grad_norm,
            "warmup_steps": self.warmup_steps,
            "mode": self.mode,
            "clip_option": self.clip_option,
            "clip_factor": self.clip_factor,
            "skip_update_on_spike": self.skip_update_on_spike,
            "eps": self.eps,
            "skip_factor": self.skip_factor,
        }

    @property
    def mean(self) -> Tensor:
        """EMA of the gradient norm (0-dim float64; 0 until the warm-up ends)."""
        return self._state["mean"]

    @property
    def var(self) -> Tensor:
        """EMA of the squared deviation (0-dim float64; 0 until the warm-up ends)."""
        return self._state["var"]

    @property
    def initialized(self) -> Tensor:
        """0-dim bool tensor: whether the warm-up is over and the EMAs are in use."""
        return self._state["count"] >= self.warmup_steps

    def decide(self, norm: Tensor) -> ClipResult:
        """Judge ``norm`` against the EMAs, update them, and return the coefficient.

        A non-finite ``norm`` changes nothing and gets ``coef`` 1 and ``skip`` True.
        """
        g = self._follow(norm)
        state, width = self._state, self.warmup_steps
        two, half = g.new_full((), 2.0), g.new_full((), 0.5)
        finite = torch.isfinite(g)
        count, mean, var = state["count"], state["mean"], state["var"]
        ready = count >= width
        warm = finite & ~ready

        # Warm-up: store the norm, and at the last warm-up step start the EMAs from the
        # buffer's population mean and variance (sequential sums, as Python's sum()).
        slot = count.clamp(max=width - 1).view(1)
        buffer = state["buffer"]
        buffer = buffer.index_copy(0, slot, torch.where(warm, g, buffer.index_select(0, slot)))
        total = torch.where(warm, state["total"] + g, state["total"])
        new_count = count + finite.to(torch.int64)
        start = warm & (new_count == width)
        mean0 = total / width
        var0 = _python_pow(buffer - mean0, two).cumsum(0)[-1] / width

        # After warm-up: the rule.
        std = _python_pow(var, half)
        if self.mode == "percentile":
            bound = mean + self.z_thresh * std
            spike = g > bound
            clip_val = bound
        else:
            z = (g - mean) / (std + self.eps)
            spike = z > self.z_thresh
            bound = mean + self.z_thresh * (std + self.eps)
            if self.clip_option == "adaptive_scaling":
                eta = z / self.z_thresh
                clip_val = (mean + (self.z_thresh * std) / eta) * self.clip_factor
            else:
                clip_val = mean
        spike = spike & ready & finite
        adaptive = torch.where(spike, clip_val, g)
        if self.max_grad_norm is not None:
            effective = torch.clamp(adaptive, max=self.max_grad_norm)
            warm_threshold = self.max_grad_norm
            # Warm-up clips as torch.nn.utils.clip_grad_norm_ does, in the norm's dtype.
            warm_coef = torch.clamp(self.max_grad_norm / (norm.detach() + NORM_EPS), max=1.0)
        else:
            effective, warm_threshold = adaptive, math.inf
            warm_coef = torch.ones_like(norm)
        coef = torch.where(g > effective, effective / (g + NORM_EPS), torch.ones_like(g))
        coef = torch.where(ready, coef, warm_coef.to(g.dtype))
        threshold = torch.where(ready, effective, g.new_full((), warm_threshold))

        update = ready & finite
        if self.skip_update_on_spike:
            update = update & ~spike
        new_mean = self.alpha * mean + (1 - self.alpha) * adaptive
        new_var = self.alpha * var + (1 - self.alpha) * _python_pow(adaptive - new_mean, two)
        state["mean"] = torch.where(update, new_mean, torch.where(start, mean0, mean))
        state["var"] = torch.where(update, new_var, torch.where(start, var0, var))
        state["buffer"], state["total"], state["count"] = buffer, total, new_count
        return self._result(norm, coef, threshold, spike, bound, finite)
