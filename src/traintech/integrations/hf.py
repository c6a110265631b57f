"""Hugging Face ``transformers.Trainer``: ``TraintechCallback`` and the ``GuardedOptimizer`` route.

Usage (``pip install 'traintech[integrations]'``)::

    from traintech.clip import ZClip
    from traintech.integrations.hf import TraintechCallback
    args = TrainingArguments(..., max_grad_norm=0.0)
    Trainer(model, args, callbacks=[TraintechCallback(ZClip())])
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from traintech.clip._protocol import Clipper
from traintech.clip._unwrap import mark_step_skipped, unwrap_optimizer, wrapper_scaler
from traintech.integrations._core import IMPORT_HINT, GradientGuard, GuardCounts, check_version
from traintech.integrations._sinks import PendingLogs
from traintech.monitor._monitor import Monitor

try:
    from transformers import TrainerCallback
except ImportError as err:  # pragma: no cover - the extra is installed in the test env
    raise ImportError(f"traintech.integrations.hf needs transformers: {IMPORT_HINT}") from err

#: The file the callback writes into each ``checkpoint-N`` folder.
STATE_FILE = "traintech.pt"


def _loss_of(output: Any) -> Tensor | None:
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, dict):
        loss = output.get("loss")
    return loss if isinstance(loss, Tensor) else None


class TraintechCallback(GuardCounts, TrainerCallback):
    """Clip, skip non-finite steps, monitor and checkpoint inside the HF ``Trainer``.

    Hooks:

    * ``on_init_end`` / ``on_train_begin``: refuse ``max_grad_norm`` > 0 (the Trainer's own
      ``clip_grad_norm_`` would run first and multiply every gradient by ``max/NaN``, spreading
      one NaN to all of them before we could skip); on resume, load ``traintech.pt`` from
      ``output_dir/checkpoint-<global_step>``; build the Monitor; hook the model's forward
      output to read ``.loss`` (no model rewrite).
    * ``on_pre_optimizer_step`` (the gradients are final, accumulation done): unscale under fp16
      (through the ``AcceleratedOptimizer``'s scaler), clip with the
      :class:`~traintech.integrations.GradientGuard`, and on a skip set every
      ``p.grad = None``.
    * ``on_optimizer_step``: mark ``step_was_skipped`` on the ``AcceleratedOptimizer`` so the
      Trainer does not advance the LR scheduler on a skipped step; step the Monitor (once per
      optimizer step, with the mean micro-batch loss).
    * ``on_save``: write the guard, clipper and Monitor state to ``checkpoint-N/traintech.pt``.
    * ``on_log``: add ``traintech/norm``, ``coef``, ``threshold``, ``skipped_total`` and the
      Monitor's ``monitor/...`` scalars to the logs, and ``traintech/nonfinite_losses``: the
      Trainer's ``logging_nan_inf_filter`` (on by default) replaces a NaN loss by the running
      average, hiding a divergence; this count shows it.

    Args:
        clipper: a :class:`~traintech.clip.Clipper`, or None (skip non-finite steps only).
        log_dir: folder of the Monitor's own logs; None keeps them in memory.
        monitor: build a Monitor (with ``log_dir``). Default: True.
        skip: drop the gradients of a skipped step (False: clip only).
        **guard_kwargs: other :class:`~traintech.clip.GuardedStep` arguments.

    Attributes:
        steps_applied: optimizer steps let through (also in ``traintech.pt``).
        steps_skipped: optimizer steps skipped (also in ``traintech.pt``).
        nonfinite_losses: micro-batches whose loss was NaN/Inf.
        monitor: the Monitor, once training started.
    """

    _version = 1

    def __init__(
        self,
        clipper: Clipper | None,
        log_dir: str | Path | None = None,
        monitor: bool = True,
        skip: bool = True,
        **guard_kwargs: Any,
    ) -> None:
        if not isinstance(monitor, bool):
            raise TypeError(f"monitor must be a bool, got {type(monitor).__name__}")
        self.guard = GradientGuard(clipper, skip=skip, **guard_kwargs)
        self.log_dir = log_dir
        self._want_monitor = monitor
        self.monitor: Monitor | None = None
        self.nonfinite_losses = 0
        self._losses: list[Tensor] = []
        self._hook: Any = None
        self._pending_logs = PendingLogs()

    @staticmethod
    def _check_args(args: Any) -> None:
        max_norm = getattr(args, "max_grad_norm", 0.0)
        if max_norm and max_norm > 0:
            raise ValueError(
                f"TrainingArguments(max_grad_norm={max_norm!r}) must be 0 with TraintechCallback: "
                "the Trainer would clip first (one NaN then spreads to every gradient through its "
                "norm) and clip twice. Set max_grad_norm=0.0; the callback's clipper clips."
            )

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Refuse ``max_grad_norm`` > 0 as soon as the Trainer is built."""
        self._check_args(args)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Check the arguments, resume the state, build the Monitor, hook the loss."""
        self._check_args(args)
        model = kwargs["model"]
        if self.monitor is None and self._want_monitor:
            self.monitor = Monitor(
                model, unwrap_optimizer(kwargs["optimizer"]), self.log_dir,
                sink=self._pending_logs,
            )
        if state.global_step > 0:
            self._resume(args, state.global_step)
        if self._hook is None:
            self._hook = model.register_forward_hook(self._read_loss)

    def _resume(self, args: Any, step: int) -> None:
        """Load ``traintech.pt`` of the checkpoint the Trainer resumed from, or warn."""
        folders = [os.path.join(args.output_dir, f"checkpoint-{step}")]
        explicit = getattr(args, "resume_from_checkpoint", None)
        if isinstance(explicit, str):
            folders.insert(0, explicit)
        for folder in folders:
            path = os.path.join(folder, STATE_FILE)
            if os.path.isfile(path):
                self.load_state_dict(torch.load(path, weights_only=False))
                return
        warnings.warn(
            f"the Trainer resumed at step {step} but no {STATE_FILE} was found in "
            f"{' or '.join(folders)}: the clipper's statistics, the skip counts and the Monitor "
            "start afresh. Resume with output_dir set to the run's folder (or "
            "TrainingArguments(resume_from_checkpoint=...)) to continue them.",
            stacklevel=2,
        )

    def _read_loss(self, module: Any, inputs: Any, output: Any) -> None:
        loss = _loss_of(output)
        if loss is not None and module.training:
            self._losses.append(loss.detach())

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Unscale (fp16), clip, and on a skip drop every gradient."""
        optimizer = kwargs["optimizer"]
        self.guard.before_step(optimizer, wrapper_scaler(optimizer))

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Hold the scheduler on a skipped step and step the Monitor."""
        report = self.guard.last_report
        if report is not None:
            mark_step_skipped(kwargs["optimizer"], report.skipped)
        loss = torch.stack(self._losses).float().mean() if self._losses else None
        if loss is not None:
            self.nonfinite_losses += int((~torch.isfinite(torch.stack(self._losses))).sum())
        self._losses = []
        if self.monitor is not None:
            self.monitor.step(loss=loss, clip=self.guard.clip_result())

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Write the state into ``output_dir/checkpoint-<global_step>/traintech.pt``."""
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder) and state.is_world_process_zero:
            torch.save(self.state_dict(), os.path.join(folder, STATE_FILE))

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Add the guard's and the Monitor's numbers to the Trainer's logs."""
        if logs is None:
            return
        added: dict[str, float] = {
            "traintech/skipped_total": float(self.steps_skipped),
            "traintech/nonfinite_losses": float(self.nonfinite_losses),
        }
        for key, value in self.guard.metrics().items():
            number = float(value)
            if math.isfinite(number):
                added[key] = number
        self._pending_logs.merge_into(added)
        logs.update(added)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(added)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Remove the loss hook and close the Monitor's files."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.monitor is not None:
            self.monitor.close()

    def state_dict(self) -> dict[str, Any]:
        """Counts, guard and clipper state, and the Monitor's state."""
        return {
            "_version": self._version,
            "guard": self.guard.state_dict(),
            "nonfinite_losses": self.nonfinite_losses,
            "monitor": None if self.monitor is None else self.monitor.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: for another ``_version``.
        """
        check_version(state_dict, self._version, "TraintechCallback")
        self.guard.load_state_dict(state_dict["guard"])
        self.nonfinite_losses = int(state_dict["nonfinite_losses"])
        if state_dict["monitor"] is not None and self.monitor is not None:
            self.monitor.load_state_dict(state_dict["monitor"])


__all__ = ["STATE_FILE", "TraintechCallback"]
