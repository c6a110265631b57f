"""Rollback on persistent loss spikes: rewind to the last good snapshot and skip the batches."""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from traintech.monitor._spikes import SpikeDetector


class _Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> Any: ...


class _EventSink(Protocol):
    def log_event(self, kind: str, **fields: Any) -> None: ...


@dataclass(frozen=True)
class Rollback:
    """What :meth:`RollbackGuard.step` did when it rewound the run.

    Attributes:
        step: the batch index (0-based call count of ``step``) at which it rewound.
        restored_step: the batch index whose post-update state was restored (-1: the state
            before the first step).
        skip: ``(first, last)`` batch indices of the persistent spike: the batches to leave
            out when the data is replayed (e.g. after a restart from an on-disk checkpoint).
        discarded: ``(first, last)`` batch indices whose updates were undone.
        lr_scale: the factor the learning rates now carry from all rollbacks so far.
    """

    step: int
    restored_step: int
    skip: tuple[int, int]
    discarded: tuple[int, int]
    lr_scale: float


@dataclass
class _Snapshot:
    step: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    clipper: dict[str, Any] | None
    detector: dict[str, Any]
    scaler: dict[str, Any] | None = None


class RollbackGuard:
    r"""Rewind training to the last good state when the loss spikes for ``patience`` steps.

    Large runs recover from a loss spike by going back to a checkpoint from before it and
    skipping the batches that caused it (PaLM, Chowdhery et al. 2022,
    https://arxiv.org/abs/2204.02311, Sec. 5.1). This guard does it in memory: every
    ``every`` steps without a spike it keeps a deep copy of the ``state_dict`` of the model,
    optimizer, scheduler, clipper and AMP ``GradScaler`` (at most ``keep`` of them). A loss
    :math:`x_t` is a spike when its z-score against the EMA of past losses exceeds the
    detector's threshold (:class:`SpikeDetector`):

    .. math::
        z_t = \frac{x_t - \mu_{t-1}}{\sigma_{t-1}} > z_{thresh}

    When ``patience`` consecutive steps spike, the newest snapshot is restored exactly (state
    dicts are deep-copied again on restore, so a snapshot can serve twice), the learning rates
    are multiplied by ``lr_factor`` (param groups and the scheduler's ``base_lrs``), and a
    :class:`Rollback` names the batch window to skip. Training simply continues with the next
    batch of the data stream, so the spiking batches are not seen again. Right after a
    rollback the guard is on alert: until ``patience`` clean steps have passed, a single spike
    rewinds again (a bad stretch of data usually outlasts the patience), without a further LR
    cut.

    Call :meth:`step` once per optimizer step, after ``optimizer.step()`` and
    ``scheduler.step()``. It reads the loss on the host (one sync per step).

    Args:
        model: the model.
        optimizer: its optimizer.
        scheduler: an LR scheduler to snapshot and restore, or None.
        clipper: any object with ``state_dict``/``load_state_dict`` (e.g. a
            ``traintech.clip`` clipper), or None.
        every: steps between snapshots (>= 1). Default: 50.
        patience: consecutive spiking steps that trigger a rollback (>= 1). Default: 5.
        keep: snapshots kept in memory (>= 1). Default: 2.
        lr_factor: multiply the learning rates by this after a rollback, in (0, 1]; None
            leaves them. Default: None.
        max_rollbacks: raise ``RuntimeError`` at the rollback after this many. Default: 10.
        detector: the loss spike detector. Default: ``SpikeDetector()``.
        monitor: a :class:`Monitor` (or anything with ``log_event``) to log rollbacks to.
        scaler: the ``torch.amp.GradScaler`` of an fp16 run, or None. Its scale and growth
            tracker are snapshotted and restored with the rest: a spike that made the scaler
            back off is undone with it, and a restored run does not keep a scale from the
            future of its weights.

    Example:
        >>> model = nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> guard = RollbackGuard(model, opt, every=10, patience=3)
        >>> guard.step(torch.tensor(0.5)) is None
        True
    """

    _version: int = 1

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: _Stateful | None = None,
        clipper: _Stateful | None = None,
        *,
        every: int = 50,
        patience: int = 5,
        keep: int = 2,
        lr_factor: float | None = None,
        max_rollbacks: int = 10,
        detector: SpikeDetector | None = None,
        monitor: _EventSink | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        for name, value in (("every", every), ("patience", patience), ("keep", keep),
                            ("max_rollbacks", max_rollbacks)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} ({value}) must be an int >= 1")
        if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
            raise TypeError(
                f"scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}"
            )
        if lr_factor is not None and not 0.0 < lr_factor <= 1.0:
            raise ValueError(f"lr_factor ({lr_factor}) must lie in (0, 1], or be None")
        for name, obj in (("scheduler", scheduler), ("clipper", clipper)):
            if obj is not None and not (
                hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")
            ):
                raise TypeError(
                    f"{name} must have state_dict() and load_state_dict(), got "
                    f"{type(obj).__name__}"
                )
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.clipper = clipper
        self.scaler = scaler
        self.every = every
        self.patience = patience
        self.lr_factor = lr_factor
        self.max_rollbacks = max_rollbacks
        self.detector = detector if detector is not None else SpikeDetector()
        self.monitor = monitor
        self.batch = 0
        self.lr_scale = 1.0
        self.rollbacks: list[Rollback] = []
        self.snapshots: deque[_Snapshot] = deque(maxlen=keep)
        self._run_start: int | None = None
        self._alert = 0
        self._incident = 0
        self.snapshot(-1)

    def snapshot(self, step: int) -> None:
        """Keep a deep copy of every state now, labelled with batch index ``step``."""
        self.snapshots.append(
            _Snapshot(
                step,
                copy.deepcopy(self.model.state_dict()),
                copy.deepcopy(self.optimizer.state_dict()),
                None if self.scheduler is None else copy.deepcopy(self.scheduler.state_dict()),
                None if self.clipper is None else copy.deepcopy(self.clipper.state_dict()),
                self.detector.state_dict(),
                None if self.scaler is None else copy.deepcopy(self.scaler.state_dict()),
            )
        )

    def step(self, loss: Tensor | float) -> Rollback | None:
        """Score this step's loss; snapshot, or rewind after ``patience`` spiking steps.

        Returns:
            A :class:`Rollback` when the run was rewound at this step, else None.
        """
        t = self.batch
        self.batch += 1
        value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
        spike, _ = self.detector.update(value)
        if spike:
            if self._run_start is None:
                self._run_start = t
            if self._alert > 0:
                return self._rewind(t, self._incident)
            if t - self._run_start + 1 >= self.patience:
                self._incident = self._run_start
                return self._rewind(t, self._run_start)
            return None
        self._run_start = None
        if self._alert > 0:
            self._alert -= 1
        elif (t + 1) % self.every == 0:
            self.snapshot(t)
        return None

    def _rewind(self, t: int, first_bad: int) -> Rollback:
        if len(self.rollbacks) >= self.max_rollbacks:
            raise RuntimeError(
                f"RollbackGuard: loss spikes persisted for {self.patience} steps at batch {t} "
                f"after {len(self.rollbacks)} rollbacks (max_rollbacks={self.max_rollbacks}); "
                "lower the learning rate or inspect the data"
            )
        snap = self.snapshots[-1]
        self.model.load_state_dict(copy.deepcopy(snap.model))
        self.optimizer.load_state_dict(copy.deepcopy(snap.optimizer))
        if self.scheduler is not None and snap.scheduler is not None:
            self.scheduler.load_state_dict(copy.deepcopy(snap.scheduler))
        if self.clipper is not None and snap.clipper is not None:
            self.clipper.load_state_dict(copy.deepcopy(snap.clipper))
        if self.scaler is not None and snap.scaler:
            self.scaler.load_state_dict(copy.deepcopy(snap.scaler))
        self.detector.load_state_dict(snap.detector)
        if self.lr_factor is not None and self._alert == 0:
            self.lr_scale *= self.lr_factor
        if self.lr_scale != 1.0:
            self._scale_lr(self.lr_scale)
        self._run_start = None
        self._alert = self.patience
        event = Rollback(t, snap.step, (first_bad, t), (snap.step + 1, t), self.lr_scale)
        self.rollbacks.append(event)
        if self.monitor is not None:
            self.monitor.log_event(
                "rollback", restored_step=snap.step, skip=list(event.skip),
                discarded=list(event.discarded), lr_scale=self.lr_scale,
            )
        return event

    def _scale_lr(self, scale: float) -> None:
        # The restored state carries the learning rates of its time; apply the total cut.
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] * scale
        base_lrs = getattr(self.scheduler, "base_lrs", None)
        if isinstance(base_lrs, list):
            base_lrs[:] = [lr * scale for lr in base_lrs]
        last_lr = getattr(self.scheduler, "_last_lr", None)
        if isinstance(last_lr, list):
            last_lr[:] = [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Counters, rollbacks and detector state (snapshots are not included)."""
        return {
            "_version": self._version,
            "batch": self.batch,
            "lr_scale": self.lr_scale,
            "run_start": self._run_start,
            "alert": self._alert,
            "incident": self._incident,
            "rollbacks": [vars(r).copy() for r in self.rollbacks],
            "detector": self.detector.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (validated before anything changes)."""
        version = state_dict.get("_version")
        if version != self._version:
            raise ValueError(
                f"state_dict has _version {version!r}; RollbackGuard expects {self._version}"
            )
        detector = SpikeDetector()
        detector.load_state_dict(state_dict["detector"])
        self.detector = detector
        self.batch = int(state_dict["batch"])
        self.lr_scale = float(state_dict["lr_scale"])
        self._run_start = state_dict["run_start"]
        self._alert = int(state_dict["alert"])
        self._incident = int(state_dict["incident"])
        self.rollbacks = [
            Rollback(r["step"], r["restored_step"], tuple(r["skip"]), tuple(r["discarded"]),
                     r["lr_scale"])
            for r in state_dict["rollbacks"]
        ]
