"""PyTorch Lightning: ``TraintechCallback`` clips, skips, logs, monitors and checkpoints.

Usage (``pip install 'traintech[integrations]'``)::

    from traintech.clip import ZClip
    from traintech.integrations.lightning import TraintechCallback
    trainer = L.Trainer(callbacks=[TraintechCallback(ZClip(), monitor={"log_dir": "runs/m"})])
"""

from __future__ import annotations

from typing import Any

import torch

from traintech.clip._protocol import Clipper
from traintech.clip._unwrap import unwrap_optimizer
from traintech.integrations._core import IMPORT_HINT, GradientGuard, GuardCounts, check_version
from traintech.integrations._sinks import lightning_sink
from traintech.monitor._monitor import Monitor
from traintech.monitor._sink import record_metrics

try:
    from lightning.pytorch import Callback
except ImportError as err:  # pragma: no cover - the extra is installed in the test env
    raise ImportError(f"traintech.integrations.lightning needs lightning: {IMPORT_HINT}") from err


class TraintechCallback(GuardCounts, Callback):
    """Clip, skip non-finite steps, log and monitor a Lightning run, with its checkpoints.

    Hooks:

    * ``setup``: refuses ``Trainer(gradient_clip_val=...)`` (the gradients would be clipped
      twice, the second time after our skip decision).
    * ``on_before_optimizer_step`` (after the last backward of an accumulation window, before
      ``optimizer.step()``): unscales the gradients under fp16 where Lightning did not (fused
      optimizers), runs the :class:`~traintech.integrations.GradientGuard` (one norm per
      optimizer step), and on a skip sets every ``p.grad = None`` so the optimizer leaves
      parameters and state untouched (under fp16 the scaler still sees the inf it found and
      backs off). Logs ``traintech/norm``, ``coef``, ``threshold``, ``skipped`` with
      ``pl_module.log_dict``.
    * ``on_train_batch_end``: steps the :class:`~traintech.monitor.Monitor` once per optimizer
      step (not per micro-batch), with the batch's loss and the clip result.
    * ``state_dict`` / ``load_state_dict``: the guard, clipper and Monitor state go into
      Lightning's checkpoint; ``Trainer.fit(ckpt_path=...)`` resumes them.

    Args:
        clipper: a :class:`~traintech.clip.Clipper` (e.g. ``ZClip()``), or None to skip
            non-finite steps without clipping.
        monitor: None (no Monitor), True (default settings), a dict of :class:`Monitor` keyword
            arguments (e.g. ``{"log_dir": "runs/x"}``), or a Monitor of your own. Built at
            ``on_fit_start`` on the LightningModule and its optimizer (not in
            ``configure_model``, which Lightning may call more than once).
        skip: drop the gradients of a skipped step (False: clip only).
        log: log the step's numbers through ``pl_module.log_dict``.
        **guard_kwargs: other :class:`~traintech.clip.GuardedStep` arguments.

    Attributes:
        steps_applied: optimizer steps let through (also in the callback's state).
        steps_skipped: optimizer steps skipped (also in the callback's state).
        monitor: the Monitor, once built (None without one).

    Raises:
        TypeError: for a ``monitor`` of another type, or as :class:`GradientGuard`.
    """

    _version = 1

    def __init__(
        self,
        clipper: Clipper | None,
        monitor: bool | dict[str, Any] | Monitor | None = None,
        skip: bool = True,
        log: bool = True,
        **guard_kwargs: Any,
    ) -> None:
        super().__init__()
        if monitor is not None and not isinstance(monitor, bool | dict | Monitor):
            raise TypeError(
                "monitor must be None, True, a dict of Monitor keyword arguments or a Monitor, "
                f"got {type(monitor).__name__}"
            )
        self.guard = GradientGuard(clipper, skip=skip, **guard_kwargs)
        self._monitor_spec = monitor
        self.monitor: Monitor | None = monitor if isinstance(monitor, Monitor) else None
        self.log = log
        self._monitor_state: dict[str, Any] | None = None
        self._stepped = False

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Refuse a second clipper (``gradient_clip_val``)."""
        clip_val = getattr(trainer, "gradient_clip_val", None)
        if clip_val:
            raise ValueError(
                f"Trainer(gradient_clip_val={clip_val!r}) is set together with TraintechCallback: "
                "the gradients would be clipped twice, the second time after the skip decision. "
                "Remove gradient_clip_val (the callback's clipper does the clipping)."
            )

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Build the Monitor on the module and its (unwrapped) optimizer."""
        spec = self._monitor_spec
        if self.monitor is None and spec:
            kwargs = spec if isinstance(spec, dict) else {}
            optimizer = unwrap_optimizer(trainer.optimizers[0]) if trainer.optimizers else None
            self.monitor = Monitor(pl_module, optimizer, **kwargs)
        if self.monitor is not None and self._monitor_state is not None:
            self.monitor.load_state_dict(self._monitor_state)
            self._monitor_state = None

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        """Unscale if needed, clip, and on a skip drop every gradient; log the numbers."""
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        scaler = scaler if isinstance(scaler, torch.amp.GradScaler) else None
        self.guard.before_step(optimizer, scaler)
        self._stepped = True
        if self.log:
            pl_module.log_dict(self.guard.metrics(), on_step=True, on_epoch=False)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Step the Monitor after an optimizer step (not after a mere micro-batch)."""
        if not self._stepped:
            return
        self._stepped = False
        if self.monitor is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        clip = self.guard.clip_result()
        self.monitor.step(loss=loss if isinstance(loss, torch.Tensor) else None, clip=clip)
        if self.log and self.monitor.history:
            metrics = record_metrics(self.monitor.history[-1])
            if metrics:
                pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """Close the Monitor (its hooks and files); its history and state stay readable."""
        if self.monitor is not None:
            self.monitor.close()

    def state_dict(self) -> dict[str, Any]:
        """Counts, guard and clipper state, and the Monitor's state (Lightning checkpoints it)."""
        monitor = self.monitor.state_dict() if self.monitor is not None else self._monitor_state
        return {"_version": self._version, "guard": self.guard.state_dict(), "monitor": monitor}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (Lightning calls it when resuming from ``ckpt_path``).

        Raises:
            ValueError: for another ``_version``.
        """
        check_version(state_dict, self._version, "TraintechCallback")
        self.guard.load_state_dict(state_dict["guard"])
        if state_dict["monitor"] is not None:
            if self.monitor is not None:
                self.monitor.load_state_dict(state_dict["monitor"])
            else:
                self._monitor_state = state_dict["monitor"]


__all__ = ["TraintechCallback", "lightning_sink"]
