r"""Shared machinery of the adaptive clippers: tensor state, checkpoints and the spike policy.

Every adaptive clipper (:class:`~traintech.clip.EMAClip`, :class:`~traintech.clip.QuantileClip`,
:class:`~traintech.clip.ZClip`) keeps its statistics as tensors on the gradients' device and,
updates them with ``torch.where``, so a step never waits for the device. There is one
implementation of each rule, this tensor path, on every device: no branch on a norm's value is
taken in Python, so ``torch.compile`` traces a decision once and does not specialise (and
recompile) on each norm. A non-finite norm never enters the statistics: the state after it is
the state before it.

Spike policy. Each clipper defines when a norm is a *spike* (above its adaptive threshold) and
the *spike boundary* :math:`b_t`, the norm above which step :math:`t` is one. The gradients of a
spike are always scaled down. With ``skip_factor`` :math:`k` set, the step is also marked
``result.skip`` when

.. math::
    \text{skip}_t = \text{spike}_t \wedge \|g_t\| > k\, b_t
    \quad\vee\quad \|g_t\| \notin \mathbb{R},

so the guarded optimizer step can drop the update; a loop that ignores ``skip`` gets plain
clipping. ``k = 1`` skips every spike, ``k = 3`` only those three times over the boundary.
A skipped spike still counts as an observation, exactly as a clipped one does, so a lasting
change of gradient scale is learned instead of being skipped forever.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import torch
from torch import Tensor

from traintech._compat import state_dtype
from traintech.clip._protocol import Clipper, ClipResult


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r})")
    return float(value)


def check_positive(name: str, value: object) -> float:
    """Return ``value`` as a float; raise ``ValueError`` unless it is finite and > 0."""
    number = _check_number(name, value)
    if not (0.0 < number < math.inf):
        raise ValueError(f"{name} ({value!r}) must be a finite number > 0")
    return number


def check_interval(name: str, value: object, low: float, high: float, closed: str) -> float:
    """Return ``value`` as a float; raise ``ValueError`` unless it lies in the interval.

    ``closed`` is one of ``"()"``, ``"[)"``, ``"[]"`` and gives which ends are included.
    """
    number = _check_number(name, value)
    above = number >= low if closed[0] == "[" else number > low
    below = number <= high if closed[1] == "]" else number < high
    if not (above and below):
        raise ValueError(f"{name} ({value!r}) must lie in {closed[0]}{low}, {high}{closed[1]}")
    return number


def check_count(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value``; raise ``TypeError`` unless an int, ``ValueError`` if < ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} ({value}) must be an int >= {minimum}")
    return value


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` lower-cased; raise ``ValueError`` unless it is one of ``choices``."""
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"{name} ({value!r}) must be one of {', '.join(map(repr, choices))}")
    return value.lower()


def check_skip_factor(value: object) -> float | None:
    """Return ``skip_factor`` (None or a float >= 1); raise ``ValueError`` otherwise."""
    if value is None:
        return None
    number = _check_number("skip_factor", value)
    if not (1.0 <= number < math.inf):
        raise ValueError(
            f"skip_factor ({value!r}) must be None (never skip) or a finite number >= 1"
        )
    return number


class AdaptiveClipper(Clipper):
    """Base of the clippers whose threshold comes from the run's own gradient norms.

    Subclasses keep their statistics as tensors in the dict ``self._state`` (filled in their
    constructor), return their hyper-parameters from :meth:`_settings`, and implement
    :meth:`decide`.
    """

    #: :meth:`decide` accepts a non-finite norm and leaves the statistics as they were, so the
    #: guarded step may judge before its one host read (no second sync, one graph break).
    decides_nonfinite: bool = True

    def __init__(self, skip_factor: float | None) -> None:  # noqa: D107
        self.skip_factor = check_skip_factor(skip_factor)
        self._state: dict[str, Tensor] = {}

    @abstractmethod
    def _settings(self) -> dict[str, Any]:
        """The constructor arguments, as stored in :meth:`state_dict`."""

    def __repr__(self) -> str:
        """``Name(setting=value, ...)`` with the constructor arguments."""
        settings = ", ".join(f"{k}={v!r}" for k, v in self._settings().items())
        return f"{type(self).__name__}({settings})"

    def _follow(self, norm: Tensor) -> Tensor:
        """Move the state to ``norm``'s device (once) and return ``norm`` in the state's dtype.

        The state dtype is float64, or float32 on devices without float64 (MPS), see
        :func:`traintech._compat.state_dtype`.
        """
        device = norm.device
        wide = state_dtype(device)
        if any(value.device != device for value in self._state.values()):
            self._state = {
                name: value.to(device, wide if value.dtype == torch.float64 else value.dtype)
                for name, value in self._state.items()
            }
        return norm.detach().to(wide)

    def _result(
        self,
        norm: Tensor,
        coef: Tensor,
        threshold: Tensor,
        spike: Tensor,
        boundary: Tensor,
        finite: Tensor,
    ) -> ClipResult:
        """Assemble the step's :class:`ClipResult` and apply the spike policy.

        ``coef`` is replaced by 1 where the norm is not finite and cast to ``norm``'s dtype.
        """
        one = torch.ones((), dtype=coef.dtype, device=coef.device)
        coef = torch.where(finite, coef, one).to(norm.dtype)
        skip = ~finite
        if self.skip_factor is not None:
            over = norm.detach().to(state_dtype(norm.device)) > boundary * self.skip_factor
            skip = skip | (finite & spike & over)
        return ClipResult(norm=norm, coef=coef, threshold=threshold, skip=skip)

    def state_dict(self) -> dict[str, Any]:
        """Return the settings and a copy of the statistics (tensors), with ``_version``."""
        state = super().state_dict()
        state["settings"] = self._settings()
        for name, value in self._state.items():
            state[name] = value.detach().clone()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s statistics; the settings must equal this clipper's.

        Raises:
            ValueError: if ``_version`` or a setting differs, or a statistic is missing or has
                another shape or dtype. Nothing is changed then.
        """
        super().load_state_dict(state_dict)
        saved = state_dict.get("settings")
        mine = self._settings()
        if not isinstance(saved, dict):
            raise ValueError("state_dict has no 'settings' dict; was it saved by this clipper?")
        for key, value in mine.items():
            if saved.get(key) != value:
                raise ValueError(
                    f"state_dict was saved with {key}={saved.get(key)!r} but this "
                    f"{type(self).__name__} has {key}={value!r}; construct it with the same "
                    "settings to resume"
                )
        loaded: dict[str, Tensor] = {}
        for name, current in self._state.items():
            value = state_dict.get(name)
            if not isinstance(value, Tensor):
                raise ValueError(f"state_dict[{name!r}] is missing or not a tensor")
            if value.shape != current.shape or value.dtype != current.dtype:
                raise ValueError(
                    f"state_dict[{name!r}] has shape {tuple(value.shape)} and dtype "
                    f"{value.dtype}; expected {tuple(current.shape)} and {current.dtype}"
                )
            loaded[name] = value.detach().clone().to(current.device)
        self._state = loaded
