"""``DropoutScheduler``: change the rate of a model's dropout layers over training steps."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from traintech.dropout._checks import check_p
from traintech.dropout._layers import dropout_layers, rate_attribute

SHAPES = ("linear", "cosine", "step")


class DropoutScheduler:
    r"""Ramp the rate of every dropout layer of a model from ``start`` to ``end`` over steps.

    At step :math:`t` (``0`` at construction, ``+1`` per :meth:`step`) each layer gets

    .. math::
        p(t) = p_\text{start} + (p_\text{end} - p_\text{start})\, s(\min(t / T, 1))

    with :math:`T` = ``total_steps`` and :math:`s(u) = u` (``"linear"``),
    :math:`\tfrac12(1 - \cos \pi u)` (``"cosine"``) or :math:`[u \ge 1]` (``"step"``), and
    the rate held at :math:`p_\text{end}` after :math:`T`. ``start``/``end`` left as ``None``
    mean each layer's own rate at construction, so per-block stochastic-depth rates keep
    their depth profile. Recipes:

    * curriculum dropout (Morerio et al. 2017, https://arxiv.org/abs/1703.06229): ``start=0``,
      ``end=None`` — regularise more as the network fits more;
    * early dropout (Liu et al. 2023, https://arxiv.org/abs/2303.01500, for underfitting
      models): ``start=None, end=0.0, shape="step"`` over the first ~10-20% of steps;
    * late dropout (same paper, for overfitting models): ``start=0.0, end=None,
      shape="step"``.

    Layers: traintech's, ``torch.nn``'s ``Dropout*``/``AlphaDropout``/``FeatureAlphaDropout``,
    and timm/torchvision ``DropPath``/``DropBlock2d``/``StochasticDepth`` (by class name).

    Args:
        model: the model whose dropout layers are driven.
        total_steps: steps of the ramp, ``>= 1``.
        start: rate at step 0 (``None``: each layer's own). Default: 0.0.
        end: rate from step ``total_steps`` on (``None``: each layer's own). Default: ``None``.
        shape: ``"linear"`` (default), ``"cosine"`` or ``"step"``.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.4))
        >>> sched = DropoutScheduler(model, total_steps=4)
        >>> rates = [round(model[1].p, 3)]
        >>> for _ in range(5):
        ...     sched.step()
        ...     rates.append(round(model[1].p, 3))
        >>> rates
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.4]
    """

    _version = 1

    def __init__(
        self,
        model: nn.Module,
        total_steps: int,
        *,
        start: float | None = 0.0,
        end: float | None = None,
        shape: str = "linear",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int):
            raise TypeError(f"total_steps must be an int, got {type(total_steps).__name__}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
        start = None if start is None else check_p(start, "start")
        end = None if end is None else check_p(end, "end")
        layers = dropout_layers(model)
        if not layers:
            raise ValueError("model has no dropout layers to schedule")
        for name, module in layers:
            needs_below_one = "Alpha" in type(module).__name__
            if needs_below_one and 1.0 in (start, end):
                raise ValueError(
                    f"start/end = 1.0 is not allowed: layer {name!r} "
                    f"({type(module).__name__}) needs p < 1"
                )
        self.model = model
        self.total_steps = total_steps
        self.start = start
        self.end = end
        self.shape = shape
        self.layers = layers
        self.base_rates = {name: float(getattr(m, rate_attribute(m))) for name, m in layers}
        self.last_step = 0
        self._apply()

    def progress(self) -> float:
        r"""The ramp :math:`s(\min(t/T, 1))` in ``[0, 1]`` at the current step."""
        u = min(self.last_step / self.total_steps, 1.0)
        if self.shape == "linear":
            return u
        if self.shape == "cosine":
            return 0.5 * (1.0 - math.cos(math.pi * u))
        return 1.0 if u >= 1.0 else 0.0

    def get_rates(self) -> dict[str, float]:
        """The rate of each scheduled layer (by module name) at the current step."""
        s = self.progress()
        rates = {}
        for name, base in self.base_rates.items():
            lo = base if self.start is None else self.start
            hi = base if self.end is None else self.end
            rates[name] = min(1.0, max(0.0, lo + (hi - lo) * s))
        return rates

    def _apply(self) -> None:
        rates = self.get_rates()
        for name, module in self.layers:
            setattr(module, rate_attribute(module), rates[name])

    def step(self) -> None:
        """Advance one step and set the layers' rates."""
        self.last_step += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """The schedule's state (step, settings, the layers' base rates) with ``_version``."""
        return {
            "_version": self._version,
            "last_step": self.last_step,
            "total_steps": self.total_steps,
            "start": self.start,
            "end": self.end,
            "shape": self.shape,
            "base_rates": dict(self.base_rates),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` and set the layers' rates for its step.

        Raises:
            ValueError: if the version is unknown or the layer names do not match.
        """
        version = state_dict.get("_version")
        if version != self._version:
            raise ValueError(
                f"state_dict _version {version!r} is not supported (expected {self._version})"
            )
        names = set(state_dict["base_rates"])
        if names != set(self.base_rates):
            raise ValueError(
                f"state_dict base_rates name the layers {sorted(names)}, but the model has "
                f"{sorted(self.base_rates)}"
            )
        self.last_step = int(state_dict["last_step"])
        self.total_steps = int(state_dict["total_steps"])
        self.start = state_dict["start"]
        self.end = state_dict["end"]
        self.shape = str(state_dict["shape"])
        self.base_rates = {k: float(v) for k, v in state_dict["base_rates"].items()}
        self._apply()
