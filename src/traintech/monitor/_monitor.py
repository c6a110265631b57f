"""The training-health monitor: one ``monitor.step()`` per optimizer step."""

from __future__ import annotations

import math
import time
from collections import deque
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from traintech.clip._guarded import StepReport
from traintech.clip._protocol import ClipResult
from traintech.clip._unwrap import unwrap_optimizer
from traintech.monitor._clip_input import (
    SCALE_MISMATCH,
    coerce_clip,
    scaled_clip_ratio,
    warn_scaled_clip,
)
from traintech.monitor._diagnosis import Finding, diagnose, format_findings
from traintech.monitor._hooks import PASS_THROUGH, ActivationProbe, NonFiniteTracer
from traintech.monitor._runlog import RunLog
from traintech.monitor._sink import check_sink, record_metrics
from traintech.monitor._spikes import SpikeDetector
from traintech.monitor._updates import DEFAULT_MAX_NUMEL, UpdateTracker, foreach_norms
from traintech.monitor._writers import finite_or_none, prepare_log_dir, tensorboard_available


class NonFiniteError(RuntimeError):
    """Raised by :meth:`Monitor.step` (with ``raise_on_nonfinite=True``) at a NaN/Inf."""


def _check_every(name: str, value: int | None, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        allowed = "an int >= 1 or None (off)" if allow_none else "an int >= 1"
        raise ValueError(f"{name} ({value}) must be {allowed}")


class Monitor:
    r"""Watch a training run: gradient norms, update ratios, activations, spikes, NaN origins.

    Call :meth:`step` once per optimizer step, **after** ``optimizer.step()`` and before
    ``optimizer.zero_grad()``: the gradients are still there, and the update of this step has
    been applied, so the update-to-weight ratio of this very step is known (a step pre-hook on
    ``optimizer`` copies the parameters on sampled steps only). On each logged step (every
    ``every`` steps) it computes

    .. math::
        \|g_p\|_2 \text{ for every parameter tensor } p \text{ (one torch.\_foreach\_norm)},
        \qquad \|g\|_2 = \Big(\sum_p \|g_p\|_2^2\Big)^{1/2},
        \qquad r_p = \frac{\|w_p^{(t)} - w_p^{(t-1)}\|_2}{\|w_p^{(t-1)}\|_2}

    (:math:`r_p`, the actual change the optimizer made, i.e. :math:`\|\mathrm{lr}\cdot
    \mathrm{update}\|/\|w\|`, every ``update_every`` steps), activation mean/std and
    dead-unit fraction (every ``activation_every`` steps), the clip coefficient and threshold
    of a :class:`traintech.clip.ClipResult`, and z-scores of the loss and gradient norm
    against their EMA (:class:`SpikeDetector`). Everything is gathered in one tensor and moved
    to the host once per logged step. Gradient norms are those seen at ``step()`` time, i.e.
    after clipping; the clipper's pre-clip norm is logged as ``clip.norm`` and is the one
    watched for spikes.

    Non-finite values: a NaN/Inf loss or gradient becomes a ``nonfinite`` event naming the
    parameters whose gradients are non-finite. With ``trace_nonfinite=True`` hooks on every
    module name the first module, in forward order (else backward order), that produced the
    NaN/Inf, at a fraction of the cost of ``torch.autograd.detect_anomaly`` (it then checks
    every step, one small host transfer each).

    Args:
        model: the model being trained.
        optimizer: its optimizer, or a framework's wrapper of it (``LightningOptimizer``,
            ``AcceleratedOptimizer``, :class:`~traintech.clip.GuardedOptimizer`): the hook goes
            on the real ``torch.optim.Optimizer``; needed for update-to-weight ratios.
        log_dir: folder for ``monitor.jsonl`` (one line per logged step, flushed at once),
            ``monitor.csv`` and TensorBoard event files; ``None`` keeps everything in memory.
            A folder that already holds a run gets a new one: ``meta["run"]`` is one past the
            largest run id in the log and every JSONL line carries ``"run"``; a monitor that
            :meth:`load_state_dict` resumes keeps writing under the saved run's id.
        every: log every ``every`` optimizer steps (>= 1). Default: 1.
        update_every: sample update ratios every ``update_every`` steps (None: off). Default: 10.
        activation_every: sample activation statistics every ``activation_every`` steps
            (None: off). Default: 100.
        trace_nonfinite: hook every module to locate the first NaN/Inf. Default: False.
        raise_on_nonfinite: raise :class:`NonFiniteError` at a non-finite step. Default: False.
        spike_z: z-score threshold of the spike detectors. Default: 4.0.
        spike_alpha: EMA factor of the spike detectors. Default: 0.98.
        spike_warmup: logged steps before spikes are scored. Default: 20.
        history: logged steps kept in memory for :meth:`summary`. Default: 2000.
        tensorboard: write TensorBoard events; None: when ``tensorboard`` is installed and
            ``log_dir`` is set. Each logged step is one event with the global scalars; the
            per-layer ones join it every ``tensorboard_layers_every`` logged steps and on
            sampled steps (TensorBoard checksums events in pure Python, about a microsecond per
            byte, so dozens of per-layer tags every step would cost more than the monitor
            itself; JSONL and CSV always hold everything). Default: None.
        tensorboard_layers_every: see ``tensorboard`` (>= 1). Default: 10.
        csv: write ``monitor.csv`` when ``log_dir`` is set. Default: True.
        sink: called as ``sink(metrics, step)`` after every logged step with the flat scalars
            of :func:`traintech.monitor._sink.record_metrics` (``monitor/loss``,
            ``monitor/clip/coef``, ...), so they reach TensorBoard/W&B through the framework's
            own logger; ready sinks in :mod:`traintech.integrations`. Default: None.


        update_max_numel: the most parameter elements copied on one sampled step to measure
            update ratios (the extra memory of the sampler); a larger model is measured one
            part at a time, in rotation. Default: ``2**22`` (16 MiB of float32).

    Example:
        >>> model = nn.Linear(3, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> mon = Monitor(model, opt)
        >>> for _ in range(3):
        ...     opt.zero_grad()
        ...     loss = model(torch.ones(4, 3)).pow(2).mean()
        ...     loss.backward()
        ...     opt.step()
        ...     rec = mon.step(loss=loss)
        >>> sorted(rec["grad_norms"])
        ['bias', 'weight']
    """

    _version: int = 1

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        log_dir: str | Path | None = None,
        every: int = 1,
        *,
        update_every: int | None = 10,
        activation_every: int | None = 100,
        trace_nonfinite: bool = False,
        raise_on_nonfinite: bool = False,
        spike_z: float = 4.0,
        spike_alpha: float = 0.98,
        spike_warmup: int = 20,
        history: int = 2000,
        tensorboard: bool | None = None,
        tensorboard_layers_every: int = 10,
        csv: bool = True,
        sink: Any = None,
        update_max_numel: int = DEFAULT_MAX_NUMEL,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if optimizer is not None:
            optimizer = unwrap_optimizer(optimizer)
        self.sink = check_sink(sink)
        _check_every("every", every, allow_none=False)
        _check_every("update_every", update_every, allow_none=True)
        _check_every("activation_every", activation_every, allow_none=True)
        _check_every("history", history, allow_none=False)
        _check_every("tensorboard_layers_every", tensorboard_layers_every, allow_none=False)
        _check_every("update_max_numel", update_max_numel, allow_none=False)
        self.loss_spikes = SpikeDetector(spike_alpha, spike_z, spike_warmup)
        self.grad_spikes = SpikeDetector(spike_alpha, spike_z, spike_warmup)
        self.log_dir = None if log_dir is None else prepare_log_dir(log_dir)
        if tensorboard and self.log_dir is not None and not tensorboard_available():
            raise ImportError("tensorboard=True needs: pip install 'traintech[monitor]'")

        self.model = model
        self.optimizer = optimizer
        self.every = every
        self.update_every = update_every
        self.activation_every = activation_every
        self.raise_on_nonfinite = raise_on_nonfinite
        self.tensorboard_layers_every = tensorboard_layers_every
        self.step_count = 0
        self._scale_warned = False
        self.history: deque[dict[str, Any]] = deque(maxlen=history)
        self.events: deque[dict[str, Any]] = deque(maxlen=history)

        self._params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        leaves = [
            (n or "<model>", m)
            for n, m in model.named_modules()
            if not any(m.children()) and not isinstance(m, PASS_THROUGH)
        ]
        self.meta: dict[str, Any] = {
            "version": self._version,
            "model": type(model).__name__,
            "params": {n: [list(p.shape), p.numel()] for n, p in self._params},
            "modules": {n: type(m).__name__ for n, m in leaves},
            "every": every,
            "update_every": update_every,
            "activation_every": activation_every,
            "started": time.time(),
        }
        self._probe = ActivationProbe(leaves)
        self._tracer = NonFiniteTracer(model) if trace_nonfinite else None
        self._updates: UpdateTracker | None = None
        if optimizer is not None and update_every is not None:
            self._updates = UpdateTracker(
                optimizer,
                self._params,
                lambda: self._sampled(self.step_count, update_every),
                update_max_numel,
            )

        self._log: RunLog | None = None
        if self.log_dir is not None:
            self._log = RunLog(
                self.log_dir,
                self.meta,
                [n for n, _ in self._params],
                [n for n, _ in leaves],
                csv=csv,
                tensorboard=tensorboard,
                layers_every=tensorboard_layers_every,
                every=every,
            )
        self._arm(self.step_count)

    # -- sampling -------------------------------------------------------------------------
    def _logged(self, t: int) -> bool:
        return t % self.every == 0

    def _sampled(self, t: int, k: int | None) -> bool:
        return k is not None and self._logged(t) and t % k == 0

    def _arm(self, t: int) -> None:
        if self._sampled(t, self.activation_every):
            self._probe.arm()

    # -- the step ---------------------------------------------------------------------------
    def step(
        self, loss: Tensor | float | None = None, clip: ClipResult | StepReport | None = None
    ) -> dict[str, Any] | None:
        """Record this optimizer step; call it after ``optimizer.step()``.

        Args:
            loss: the step's loss (a tensor is read with the other statistics, no extra sync).
            clip: the :class:`traintech.clip.ClipResult` of this step's clipper, or the
                :class:`traintech.clip.StepReport` that ``GuardedStep.step()`` returned (its
                clipper's name then reaches the diagnosis).

        Returns:
            The logged record (also written to the logs), or ``None`` on a step not logged.

        Raises:
            NonFiniteError: with ``raise_on_nonfinite=True``, when the loss or a gradient is
                NaN/Inf; the message names the module where it started when traced.
        """
        clip, clipper = coerce_clip(clip)
        t = self.step_count
        self.step_count += 1
        if not self._logged(t):
            if self._updates is not None:
                self._updates.take()
            self._arm(self.step_count)
            if self._tracer is not None:
                self._check_trace_only(self._tracer, t)
            return None
        record = self._gather(t, loss, clip)
        if clipper is not None:
            record["clip"]["clipper"] = clipper
        elif clip is not None and not self._scale_warned:
            ratio = scaled_clip_ratio(record)
            if ratio is not None and ratio >= SCALE_MISMATCH:
                self._scale_warned = True
                warn_scaled_clip(ratio)
        self._arm(self.step_count)
        self._finish(record)
        return record

    def _check_trace_only(self, tracer: NonFiniteTracer, t: int) -> None:
        flags = tracer.stacked()
        if flags is not None and not bool(torch.isfinite(flags).all()):
            record: dict[str, Any] = {"step": t, "events": []}
            self._nonfinite_event(record, t, flags.cpu().tolist(), [], loss_bad=False)
            tracer.reset()
            self._finish(record)
        tracer.reset()

    def _gather(
        self, t: int, loss: Tensor | float | None, clip: ClipResult | None
    ) -> dict[str, Any]:
        with_grad = [
            (n, p.grad) for n, p in self._params if p.grad is not None and not p.grad.is_sparse
        ]
        pieces: list[Tensor] = []
        device = with_grad[0][1].device if with_grad else torch.device("cpu")
        if with_grad:
            pieces.append(foreach_norms([g for _, g in with_grad]).to(device))
        scalars: list[Tensor] = []
        if isinstance(loss, Tensor):
            wide = torch.promote_types(loss.dtype, torch.float32)
            scalars.append(loss.detach().reshape(()).to(device, wide))
        if clip is not None:
            scalars += [
                clip.norm.detach().float().reshape(()).to(device),
                clip.coef.detach().float().reshape(()).to(device),
                clip.threshold.detach().float().reshape(()).to(device),
                clip.skip.detach().float().reshape(()).to(device),
            ]
        if scalars:
            pieces.append(torch.stack([x.to(scalars[0].dtype) for x in scalars]))
        update = self._updates.take() if self._updates is not None else None
        if update is not None:
            pieces.append(update.to(device))
        act_names, act = self._probe.collect() if self._probe.armed else ([], None)
        if act is not None:
            pieces.append(act.reshape(-1).to(device))
        trace = self._tracer.stacked() if self._tracer is not None else None
        if trace is not None:
            pieces.append(trace.to(device))
        flat = torch.cat(pieces).cpu().tolist() if pieces else []

        gnorms = flat[: len(with_grad)]
        pos = len(with_grad)
        record: dict[str, Any] = {"step": t}
        if isinstance(loss, Tensor):
            loss_v: float | None = flat[pos]
            pos += 1
        else:
            loss_v = None if loss is None else float(loss)
        total = math.sqrt(sum(x * x for x in gnorms)) if with_grad else None
        record["loss"] = finite_or_none(loss_v)
        record["grad_norm"] = finite_or_none(total)
        watched = total
        if clip is not None:
            cnorm, coef, thr, skip = flat[pos : pos + 4]
            pos += 4
            record["clip"] = {
                "norm": finite_or_none(cnorm),
                "coef": finite_or_none(coef),
                "threshold": finite_or_none(thr),
                "skip": bool(skip),
            }
            watched = cnorm
        names = [n for n, _ in with_grad]
        record["grad_norms"] = {n: finite_or_none(v) for n, v in zip(names, gnorms, strict=True)}
        if update is not None and self._updates is not None:
            upd_names = self._updates.names
            k = len(upd_names)
            upd, w = flat[pos : pos + k], flat[pos + k : pos + 2 * k]
            pos += 2 * k
            record["update_ratio"] = {
                n: finite_or_none(u / wn if wn > 0 else math.inf)
                for n, u, wn in zip(upd_names, upd, w, strict=True)
            }
        if act is not None:
            vals = flat[pos : pos + 3 * len(act_names)]
            pos += 3 * len(act_names)
            record["activations"] = {
                n: {
                    "mean": finite_or_none(vals[3 * i]),
                    "std": finite_or_none(vals[3 * i + 1]),
                    "dead": finite_or_none(vals[3 * i + 2]),
                }
                for i, n in enumerate(act_names)
            }
        trace_vals = flat[pos:]
        record["events"] = []
        if loss_v is not None:
            spike, z = self.loss_spikes.update(loss_v)
            record["loss_z"] = finite_or_none(z)
            if spike and math.isfinite(loss_v):
                self._event(record, "loss_spike", value=loss_v, z=z, ema=self.loss_spikes.mean)
        if watched is not None:
            spike, z = self.grad_spikes.update(watched)
            record["grad_z"] = finite_or_none(z)
            if spike and math.isfinite(watched):
                self._event(record, "grad_spike", value=watched, z=z, ema=self.grad_spikes.mean)
        bad_params = [n for n, v in zip(names, gnorms, strict=True) if not math.isfinite(v)]
        loss_bad = loss_v is not None and not math.isfinite(loss_v)
        if bad_params or loss_bad or any(not math.isfinite(v) for v in trace_vals):
            self._nonfinite_event(record, t, trace_vals, bad_params, loss_bad)
        if self._tracer is not None:
            self._tracer.reset()
        return record

    def _event(self, record: dict[str, Any], kind: str, **fields: Any) -> None:
        event: dict[str, Any] = {"step": record["step"], "kind": kind}
        for key, value in fields.items():
            event[key] = finite_or_none(value) if isinstance(value, float) else value
        record["events"].append(event)
        self.events.append(event)

    def _nonfinite_event(
        self,
        record: dict[str, Any],
        t: int,
        trace_vals: list[float],
        bad_params: list[str],
        loss_bad: bool,
    ) -> None:
        origin = self._tracer.origin(trace_vals) if self._tracer is not None else None
        if origin is not None:
            phase, module, message = origin
        elif bad_params:
            # Backward reaches the last parameters first: name the last one in model order.
            phase, module = "gradient", bad_params[-1]
            message = (
                f"non-finite gradients in {len(bad_params)} parameter(s), first reached by "
                f"backward: '{module}'; pass trace_nonfinite=True to name the module"
            )
        else:
            phase, module = "loss", None
            message = "the loss is non-finite" + ("" if loss_bad else " (traced)")
        message = f"step {t}: {message}"
        self._event(
            record,
            "nonfinite",
            phase=phase,
            module=module,
            message=message,
            params=bad_params[:20],
        )

    def _finish(self, record: dict[str, Any]) -> None:
        """Keep ``record`` in memory and write it; raise if it holds a non-finite event."""
        self.history.append(record)
        if self._log is not None:
            self._log.write(record)
        if self.sink is not None:
            self.sink(record_metrics(record), record["step"])
        if self.raise_on_nonfinite:
            for event in record["events"]:
                if event["kind"] == "nonfinite":
                    raise NonFiniteError(event["message"])

    def log_event(self, kind: str, **fields: Any) -> None:
        """Record an event from outside (e.g. a rollback) with the current step, and log it."""
        record: dict[str, Any] = {"step": max(self.step_count - 1, 0), "events": []}
        self._event(record, kind, **fields)
        self._finish(record)

    # -- results -----------------------------------------------------------------------------
    def findings(self) -> list[Finding]:
        """The diagnosis of the steps in memory, as structured findings.

        Each :class:`Finding` has ``rule``, ``message`` (also ``advice``), ``severity``,
        ``evidence``, ``layers`` and ``steps``. Empty for a healthy run; one ``no_data`` finding
        when no step was logged (no data is not a healthy run).
        """
        return diagnose(list(self.history), self.meta)

    def summary(self) -> str:
        """The diagnosis in plain words: what looks wrong and which technique addresses it."""
        return format_findings(self.findings())

    def state_dict(self) -> dict[str, Any]:
        """Step counter, spike statistics, history and events (plain Python values)."""
        return {
            "_version": self._version,
            "step_count": self.step_count,
            "run": self.meta.get("run"),
            "loss_spikes": self.loss_spikes.state_dict(),
            "grad_spikes": self.grad_spikes.state_dict(),
            "history": [dict(r) for r in self.history],
            "events": [dict(e) for e in self.events],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (validated before anything changes)."""
        version = state_dict.get("_version")
        if version != self._version:
            raise ValueError(
                f"state_dict has _version {version!r}; Monitor expects {self._version}"
            )
        step_count = state_dict["step_count"]
        if isinstance(step_count, bool) or not isinstance(step_count, int) or step_count < 0:
            raise ValueError(f"state_dict['step_count'] ({step_count!r}) must be an int >= 0")
        loss_det = SpikeDetector()
        loss_det.load_state_dict(state_dict["loss_spikes"])
        grad_det = SpikeDetector()
        grad_det.load_state_dict(state_dict["grad_spikes"])
        self.loss_spikes, self.grad_spikes = loss_det, grad_det
        self.step_count = step_count
        self.history.clear()
        self.history.extend(dict(r) for r in state_dict["history"])
        self.events.clear()
        self.events.extend(dict(e) for e in state_dict["events"])
        run = state_dict.get("run")
        if self._log is not None and isinstance(run, int) and not isinstance(run, bool):
            self._log.continue_run(run)  # a resumed run keeps its id in the log
        self._probe.disarm()
        self._arm(self.step_count)

    def close(self) -> None:
        """Remove every hook and close the log files."""
        self._probe.disarm()
        if self._tracer is not None:
            self._tracer.remove()
        if self._updates is not None:
            self._updates.remove()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
