"""A drop-in for timm's ``NativeScaler`` whose step is the guarded step (clip + non-finite skip)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from traintech.clip._agc import AGC
from traintech.clip._ema import EMAClip
from traintech.clip._guarded import GuardedStep, StepReport
from traintech.clip._norm_clip import NormClip
from traintech.clip._protocol import Clipper
from traintech.clip._quantile import QuantileClip
from traintech.clip._unwrap import unwrap_optimizer
from traintech.clip._value_clip import ValueClip
from traintech.clip._zclip import ZClip
from traintech.integrations._core import check_version, restore_or_hold

_MODES = ("norm", "value", "agc", "zclip", "ema", "quantile")


def _make_clipper(mode: str, clip_grad: float | None) -> Clipper | None:
    if mode == "norm":
        return None if clip_grad is None else NormClip(clip_grad)
    if mode == "value":
        return None if clip_grad is None else ValueClip(clip_grad)
    if mode == "agc":
        return AGC() if clip_grad is None else AGC(clip_grad)
    if mode == "zclip":
        return ZClip(max_grad_norm=clip_grad)
    if mode == "ema":
        return EMAClip() if clip_grad is None else EMAClip(factor=clip_grad)
    return QuantileClip()


class GuardedScaler:
    """timm's ``NativeScaler`` call signature, backed by :class:`~traintech.clip.GuardedStep`.

    ``scaler(loss, optimizer, clip_grad=1.0, clip_mode="norm", parameters=...)`` does the
    backward (scaled under fp16) and, when ``need_update``, one guarded step: unscale, measure
    the norm once, clip, and skip the update (parameters, optimizer *and* clipper state
    untouched) when the norm is NaN/Inf. So a timm-style loop gets the non-finite skip by
    changing only the scaler it constructs.

    ``clip_mode``: ``"norm"`` (:class:`NormClip` of ``clip_grad``), ``"value"``
    (:class:`ValueClip`), ``"agc"`` (:class:`AGC`, ``clip_grad`` the clipping ratio, bound to
    ``parameters`` or the optimizer's), ``"zclip"`` (:class:`ZClip`, ``clip_grad`` its
    ``max_grad_norm``), ``"ema"`` (:class:`EMAClip`, ``clip_grad`` its ``factor``),
    ``"quantile"`` (:class:`QuantileClip`). A stateful clipper is created on the first call
    and kept (its statistics are in :meth:`state_dict`); a ``clipper=`` given to the
    constructor replaces ``clip_grad``/``clip_mode``.

    Args:
        clipper: a fixed :class:`~traintech.clip.Clipper`, or None to build one from each
            call's ``clip_grad``/``clip_mode`` (timm's way).
        device: the ``torch.amp.GradScaler`` device (``"cuda"``, ``"cpu"``).
        enabled: use a GradScaler (fp16 autocast); False for fp32/bf16.
        **guard_kwargs: other :class:`GuardedStep` arguments (``max_norm_skip``, ...).

    Attributes:
        state_dict_key: ``"amp_scaler"``, the checkpoint key timm's scripts save it under.
        last_report: the :class:`~traintech.clip.StepReport` of the latest update, or None.

    Raises:
        TypeError: for a ``clipper`` that is not a Clipper.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> scaler = GuardedScaler(device="cpu", enabled=False)
        >>> loss = model(torch.ones(1, 2)).sum() * float("nan")
        >>> scaler(loss, opt, clip_grad=1.0, clip_mode="norm", parameters=model.parameters())
        >>> bool(scaler.last_report.skipped), scaler.steps_skipped
        (True, 1)
    """

    state_dict_key = "amp_scaler"
    _version = 1

    def __init__(
        self,
        clipper: Clipper | None = None,
        device: str = "cuda",
        enabled: bool = True,
        **guard_kwargs: Any,
    ) -> None:
        if clipper is not None and not isinstance(clipper, Clipper):
            raise TypeError(
                f"clipper must be a traintech.clip.Clipper or None, got {type(clipper).__name__}"
            )
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
        self._scaler = torch.amp.GradScaler(device, enabled=enabled)
        self.clipper = clipper
        self._guard_kwargs = guard_kwargs
        self._key: tuple[str, float | None] | None = None
        self.guard: GuardedStep | None = None
        self._pending: dict[str, Any] | None = None
        self.last_report: StepReport | None = None

    @property
    def steps_taken(self) -> int:
        """Updates applied so far."""
        return 0 if self.guard is None else self.guard.steps_taken

    @property
    def steps_skipped(self) -> int:
        """Updates skipped so far."""
        return 0 if self.guard is None else self.guard.steps_skipped

    def _guard_for(
        self,
        optimizer: torch.optim.Optimizer,
        clip_grad: float | None,
        clip_mode: str,
        parameters: Iterable[Tensor] | None,
    ) -> GuardedStep:
        key = (clip_mode, clip_grad)
        if self.guard is not None and self.guard.optimizer is optimizer and (
            self.clipper is not None or key == self._key
        ):
            return self.guard
        old = None if self.guard is None else self.guard.clipper
        if old is not None and old.stateful:
            raise ValueError(
                f"clip_grad/clip_mode changed from {self._key} to {key} (or the optimizer "
                "changed) while a stateful clipper holds statistics; keep them fixed for a run"
            )
        clipper = self.clipper if self.clipper is not None else _make_clipper(clip_mode, clip_grad)
        if isinstance(clipper, AGC) and parameters is not None:
            clipper.bind(list(parameters))
        self.guard = GuardedStep(optimizer, clipper, scaler=self._scaler, **self._guard_kwargs)
        self._key = key
        if self._pending is not None:
            self.guard.load_state_dict(self._pending)
            self._pending = None
        return self.guard

    def __call__(
        self,
        loss: Tensor,
        optimizer: Any,
        clip_grad: float | None = None,
        clip_mode: str = "norm",
        parameters: Iterable[Tensor] | None = None,
        create_graph: bool = False,
        need_update: bool = True,
    ) -> None:
        """Backward ``loss`` (scaled); with ``need_update``, one guarded step of ``optimizer``.

        Raises:
            ValueError: for an unknown ``clip_mode``, or a ``clip_grad`` <= 0.
        """
        if clip_mode not in _MODES:
            raise ValueError(f"clip_mode ({clip_mode!r}) must be one of {', '.join(_MODES)}")
        if clip_grad is not None and not clip_grad > 0:
            raise ValueError(f"clip_grad ({clip_grad!r}) must be None or a number > 0")
        real = unwrap_optimizer(optimizer)
        self._scaler.scale(loss).backward(create_graph=create_graph)
        if need_update:
            guard = self._guard_for(real, clip_grad, clip_mode, parameters)
            self.last_report = guard.step()

    def state_dict(self) -> dict[str, Any]:
        """The GradScaler's state, plus the guard's counters and clipper statistics."""
        guard = self._pending if self.guard is None else self.guard.state_dict()
        return {"_version": self._version, "scaler": self._scaler.state_dict(), "guard": guard}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the guard's part at the first call if not built yet).

        Raises:
            ValueError: for another ``_version``.
        """
        check_version(state_dict, self._version, "GuardedScaler")
        self._scaler.load_state_dict(state_dict["scaler"])
        self._pending = restore_or_hold(self.guard, state_dict["guard"], self._pending)
