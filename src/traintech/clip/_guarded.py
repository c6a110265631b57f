r"""GuardedStep: clipping, AMP unscaling and non-finite skipping around ``optimizer.step()``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from traintech._checks import check_nonneg, check_positive_int
from traintech._compat import (
    fused_step_with_scale,
    record_scaler_found_inf,
    scaler_scale,
    scaler_unscaled,
    supports_amp_scaling,
)
from traintech._distributed import all_ranks_any, refuse_fsdp1
from traintech.clip._norm import total_norm
from traintech.clip._protocol import Clipper, ClipResult
from traintech.clip._skip_warnings import (
    DEFAULT_MAX_CONSECUTIVE_SKIPS,
    DEFAULT_WARN_EVERY,
    SkipWarner,
    skip_reason,
    warn_fp16_without_scaler,
)
from traintech.clip._unwrap import (
    accelerate_sync,
    mark_step_skipped,
    outer_wrapper,
    unwrap_optimizer,
    wrapper_scaler,
)


class TooManySkippedStepsError(RuntimeError):
    """Raised by :class:`GuardedStep` after ``max_consecutive_skips`` skipped steps in a row."""


@dataclass(frozen=True)
class StepReport:
    """What one :meth:`GuardedStep.step` did.

    Attributes:
        norm: 0-dim tensor, the total gradient norm before clipping (unscaled under AMP).
        coef: 0-dim tensor, the clip coefficient applied to the update (1.0 = none).
        skipped: 0-dim bool tensor, True when the optimizer update was skipped.
        clip: the clipper's :class:`ClipResult`, or None without a clipper or when the norm was
            non-finite (the clipper is then not consulted; on the fused path a stateless
            clipper is consulted with a zero norm instead, to avoid a host sync).
        fused: True when the coefficient was folded into a fused optimizer's step.
        synced: False on a non-sync micro-step of an ``accelerator.accumulate`` window: nothing
            was measured or stepped (``norm`` 0, ``coef`` 1, ``skipped`` False) and no counter
            moved.
        clipper: the clipper's class name (None without a clipper), for the monitor's advice.
    """

    norm: Tensor
    coef: Tensor
    skipped: Tensor
    clip: ClipResult | None
    fused: bool
    synced: bool = True
    clipper: str | None = None


def _is_fused(optimizer: torch.optim.Optimizer) -> bool:
    groups_fused = all(bool(g.get("fused")) for g in optimizer.param_groups)
    return groups_fused and supports_amp_scaling(optimizer)


class GuardedStep:
    r"""Call it instead of ``optimizer.step()``: unscale, measure once, clip, skip bad updates.

    One call, after ``loss.backward()`` (or after the last backward of an accumulation window),
    does, in this order:

    1. with a ``torch.amp.GradScaler``: unscale the gradients (clipping must see true gradients);
    2. compute the total gradient norm once (with the clipper's ``measure``);
    3. if the norm is NaN/Inf, above ``max_norm_skip``, or the clipper's result asks to skip:
       skip the update, leaving parameters, optimizer state *and clipper state* untouched (the
       clipper's ``decide`` is never called on a non-finite norm), and count it;
    4. otherwise apply the clipper and step the optimizer; with a scaler, ``scaler.update()``.

    The update actually applied is :math:`\theta \leftarrow \theta - \eta\,u(c\,g)` with
    :math:`c = \min(1, \tau/(\|g\| + 10^{-6}))`: for SGD the effective learning rate is
    :math:`\eta \min(1, \tau/\|g\|)`.

    **Fused optimizers** (``Adam``/``AdamW``/``SGD``/``Adagrad`` with ``fused=True``): the clip
    coefficient is folded into the optimizer's own step. torch's fused kernels divide every
    gradient by ``optimizer.grad_scale`` and skip the update when ``optimizer.found_inf`` is 1, so
    we set ``grad_scale = amp_scale / coef`` and ``found_inf = skip``: gradients are read once
    (for the norm), never rewritten, and with a stateless clipper (``NormClip``) there is no host
    sync. The first step of a fused optimizer (no state yet) takes the plain path.

    **Gradient accumulation**: call ``backward()`` on each micro-batch and ``step()`` once per
    optimizer step; the norm and the clip see the accumulated gradient. Zero the gradients
    yourself afterwards, as usual.

    **Host reads**: the plain path reads the device once per step (``[finite, skip]`` together;
    an adaptive or stateless clipper is judged before that read), so ``torch.compile`` of
    :meth:`step` breaks the graph once in traintech's code and, the counters being tensors,
    does not recompile from step to step.

    **Wrapped optimizers**: ``optimizer`` may be a wrapper a framework hands out
    (``LightningOptimizer``, accelerate's ``AcceleratedOptimizer``, anything exposing the real
    one as ``.optimizer``/``._optimizer``); the real ``torch.optim.Optimizer`` is stepped (so its
    hooks run and the fused fold engages). Under accelerate: the wrapper's fp16 ``scaler`` is
    used when ``scaler`` is None; a call on a non-sync micro-step of ``accelerator.accumulate``
    returns a no-op report (``synced=False``) so the clipper sees one norm per optimizer step;
    a skipped step sets ``step_was_skipped`` so accelerate's scheduler holds the learning rate.

    Args:
        optimizer: the torch optimizer to step, or a wrapper of it (see above).
        clipper: a :class:`Clipper` (e.g. ``NormClip(1.0)``), or None for no clipping (the norm
            is still measured, with the 2-norm, to detect non-finite gradients).
        scaler: a ``torch.amp.GradScaler`` when training with fp16 autocast; this object then
            calls ``scaler.unscale_``/``step``/``update`` itself (do not call them yourself).
        max_norm_skip: also skip the update when the norm exceeds this hard limit.
        max_consecutive_skips: raise :class:`TooManySkippedStepsError` after this many skipped
            steps in a row (default 50: a run that skips every step stops instead of training
            nothing); None disables the limit.
        fold: fold the coefficient into a fused optimizer: None = when possible (fused
            optimizer and a clipper that scales uniformly), False = never.
        warn_every: a :class:`SkippedStepWarning` is emitted at the first skipped step, naming
            the reason (non-finite norm, over ``max_norm_skip``, a spike the clipper asked to
            skip); later skips are counted and reported at most once every ``warn_every`` calls
            (default 100). None silences the warnings. Reading the skip flag costs one host
            sync per step; with ``warn_every=None`` and ``max_consecutive_skips=None`` a fused
            step with a stateless clipper has none.

    Warns:
        SkippedStepWarning: see ``warn_every``.
        UserWarning: once, when float16 gradients are stepped without an enabled GradScaler.

    Raises:
        TypeError: for an ``optimizer``, ``clipper`` or ``scaler`` of the wrong type.
        ValueError: for a negative/NaN ``max_norm_skip`` or ``max_consecutive_skips`` < 1, or
            ``fold=True`` where folding is impossible, or ``warn_every`` < 1.

    Example:
        >>> from traintech.clip import NormClip
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> guard = GuardedStep(opt, NormClip(1.0))
        >>> model(torch.ones(1, 2)).sum().backward()
        >>> report = guard.step()
        >>> bool(report.skipped), guard.steps_taken
        (False, 1)
    """

    _version: int = 1

    def __init__(
        self,
        optimizer: torch.optim.Optimizer | Any,
        clipper: Clipper | None = None,
        scaler: torch.amp.GradScaler | None = None,
        max_norm_skip: float | None = None,
        max_consecutive_skips: int | None = DEFAULT_MAX_CONSECUTIVE_SKIPS,
        fold: bool | None = None,
        warn_every: int | None = DEFAULT_WARN_EVERY,
    ) -> None:
        wrapper = outer_wrapper(optimizer)
        optimizer = unwrap_optimizer(optimizer)
        if clipper is not None and not isinstance(clipper, Clipper):
            raise TypeError(
                f"clipper must be a traintech.clip.Clipper (e.g. NormClip(1.0)) or None, got "
                f"{type(clipper).__name__}"
            )
        if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
            raise TypeError(
                f"scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}"
            )
        refuse_fsdp1([p for group in optimizer.param_groups for p in group["params"]])
        if scaler is None and wrapper is not None:
            scaler = wrapper_scaler(wrapper)
        if warn_every is not None:
            check_positive_int(warn_every, "warn_every")
        can_fold = _is_fused(optimizer) and (clipper is None or clipper.scales_uniformly())
        if fold and not can_fold:
            raise ValueError(
                "fold=True needs an optimizer with fused=True (Adam, AdamW, SGD, Adagrad) and a "
                f"clipper that scales uniformly; got {type(optimizer).__name__} and "
                f"{type(clipper).__name__} (use fold=None to fold only when possible)"
            )
        self.optimizer = optimizer
        self.wrapper = wrapper
        self.clipper = clipper
        if clipper is not None and getattr(clipper, "needs_parameters", False):
            if not getattr(clipper, "is_bound", True):  # e.g. AGC(): read the optimizer's weights
                clipper.bind([p for g in optimizer.param_groups for p in g["params"]])  # type: ignore[attr-defined]
        self.scaler = scaler
        self.max_norm_skip = (
            None if max_norm_skip is None else check_nonneg(max_norm_skip, "max_norm_skip")
        )
        self.max_consecutive_skips = (
            None
            if max_consecutive_skips is None
            else check_positive_int(max_consecutive_skips, "max_consecutive_skips")
        )
        self.fold = can_fold if fold is None else fold
        # Tensors, not Python ints: a compiled step would specialise (recompile) on an int's value.
        self._calls: Tensor = torch.zeros((), dtype=torch.int64)
        self.warn_every = warn_every
        self._warner = SkipWarner(warn_every)
        self._fp16_warned = False
        self._skipped: Tensor = torch.zeros((), dtype=torch.int64)
        self._consecutive: Tensor = torch.zeros((), dtype=torch.int64)
        self._last_finite: Tensor = torch.full((), -1, dtype=torch.int64)

    # ----------------------------------------------------------------------------- counters
    @property
    def steps_taken(self) -> int:
        """Optimizer updates applied so far."""
        return int(self._calls - self._skipped)

    @property
    def steps_skipped(self) -> int:
        """Updates skipped so far (non-finite gradients, hard limit, or the clipper's request)."""
        return int(self._skipped)

    @property
    def consecutive_skips(self) -> int:
        """Skipped updates since the last applied one."""
        return int(self._consecutive)

    @property
    def last_finite_step(self) -> int:
        """Index (0-based call count) of the last call with a finite gradient norm; -1 if none."""
        return int(self._last_finite)

    # ----------------------------------------------------------------------------- stepping
    def __call__(self) -> StepReport:
        """Same as :meth:`step`."""
        return self.step()

    @torch.no_grad()
    def step(self) -> StepReport:
        """Unscale, measure, clip and step (or skip); return what was done.

        Raises:
            ValueError: if no parameter of the optimizer has a gradient.
            TooManySkippedStepsError: after ``max_consecutive_skips`` skipped steps in a row.
        """
        if self.wrapper is not None and not accelerate_sync(self.wrapper):
            zero = torch.zeros(())
            return StepReport(
                zero,
                torch.ones(()),
                torch.zeros((), dtype=torch.bool),
                None,
                fused=False,
                synced=False,
            )
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            raise ValueError(
                "the optimizer's parameters have no gradients: call GuardedStep.step() after "
                "loss.backward()"
            )
        scaler = self._active_scaler()
        if scaler is not None and scaler_unscaled(scaler, self.optimizer):
            raise RuntimeError(
                "scaler.unscale_(optimizer) was already called this step: GuardedStep unscales "
                "the gradients itself before it measures them; remove your own "
                "scaler.unscale_/scaler.step/scaler.update calls"
            )
        unscaled_by_caller = getattr(self.optimizer, "grads_unscaled_by_caller", False)
        if scaler is None and not self._fp16_warned and not unscaled_by_caller:
            self._fp16_warned = warn_fp16_without_scaler(grads)
        use_fold = self.fold and self._state_ready(params)
        host_skip: bool | None = None
        if use_fold:
            report = self._fused_step(grads)
        else:
            report, host_skip = self._plain_step(grads)
        if self.wrapper is not None:
            mark_step_skipped(self.wrapper, report.skipped)
        if self.clipper is not None:
            report = replace(report, clipper=type(self.clipper).__name__)
        self._count(report, host_skip)
        return report

    def _state_ready(self, params: list[Tensor]) -> bool:
        """Whether a skipped fused step would leave the optimizer state exactly as it is.

        On its first step a fused optimizer creates its state (moments, momentum buffers) even
        when ``found_inf`` makes the kernel skip the update, so that step takes the plain path.
        Momentum-free SGD has no state at all.
        """
        opt = self.optimizer
        if isinstance(opt, torch.optim.SGD) and all(g["momentum"] == 0 for g in opt.param_groups):
            return True
        return all(p in opt.state for p in params if p.grad is not None)

    def _measure(self, grads: list[Tensor]) -> Tensor:
        if self.clipper is not None:
            return self.clipper.measure(grads)
        return total_norm(grads, 2.0)

    @staticmethod
    def _agreed(norm: Tensor) -> Tensor:
        """``norm``, or NaN on every rank when any rank of the default group has a non-finite one.

        Under DDP a NaN produced after the gradient all-reduce exists on one rank only; one tiny
        all-reduce of the flag makes every rank skip together (a no-op without a process group).
        """
        finite = torch.isfinite(norm)
        bad = all_ranks_any(~finite).to(norm.device)
        # A rank's own non-finite norm is kept as it is; a finite one becomes NaN.
        return torch.where(bad & finite, torch.full_like(norm, torch.nan), norm)

    def _active_scaler(self) -> torch.amp.GradScaler | None:
        if self.scaler is not None and self.scaler.is_enabled():
            return self.scaler
        return None

    def _plain_step(self, grads: list[Tensor]) -> tuple[StepReport, bool]:
        scaler = self._active_scaler()
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        norm = self._agreed(self._measure(grads))
        clipper = self.clipper
        finite_t = torch.isfinite(norm)
        # Judge before the one host read where that is safe: a stateless rule judges a zero
        # norm in place of a NaN, and an adaptive one leaves its state as it was on a NaN
        # (``decides_nonfinite``). Only another stateful clipper needs a second read first.
        early = clipper is not None and (
            not clipper.stateful or getattr(clipper, "decides_nonfinite", False)
        )
        result: ClipResult | None = None
        if early and clipper is not None:
            safe = norm if clipper.stateful else torch.where(finite_t, norm, torch.zeros_like(norm))
            result = clipper.decide(safe)
        bad = ~finite_t
        if self.max_norm_skip is not None:
            bad = bad | (norm > self.max_norm_skip)
        if result is not None:
            bad = bad | result.skip.to(norm.device)
        # The one host read (a single graph break under torch.compile).
        finite, skip = (bool(x) for x in torch.stack([finite_t, bad]).tolist())
        if not early and finite and clipper is not None:
            result = clipper.decide(norm)
            skip = skip or bool(result.skip)
        if not finite:
            result = None  # the clipper's verdict on a NaN is not reported
        coef = torch.ones((), dtype=norm.dtype, device=norm.device)
        if result is not None and clipper is not None:
            coef = result.coef
            if not skip:
                clipper.apply(grads, result)
                applied = getattr(clipper, "last_result", None)
                if getattr(clipper, "needs_parameters", False) and applied is not None:
                    result, coef = applied, applied.coef  # unit-wise rules report after apply
        if not skip:
            if scaler is not None:
                scaler.step(self.optimizer)
            else:
                self.optimizer.step()
        if scaler is not None:
            scaler.update()
        skipped = torch.tensor(skip, device=norm.device)
        return StepReport(norm=norm, coef=coef, skipped=skipped, clip=result, fused=False), skip

    def _fused_step(self, grads: list[Tensor]) -> StepReport:
        scaler = self._active_scaler()
        raw = self._agreed(self._measure(grads))
        device = raw.device
        amp_scale = None if scaler is None else scaler_scale(scaler).to(device)
        norm = raw if amp_scale is None else raw / amp_scale.to(raw.dtype)
        nonfinite = ~torch.isfinite(norm)
        bad = nonfinite
        if self.max_norm_skip is not None:
            bad = bad | (norm > self.max_norm_skip)
        result: ClipResult | None = None
        coef = torch.ones((), dtype=norm.dtype, device=device)
        if self.clipper is not None and (not self.clipper.stateful or not bool(nonfinite)):
            # decide() never sees a non-finite norm: a stateless clipper judges a zero norm
            # instead (no host sync), and the skip flag already holds the verdict.
            safe = torch.where(nonfinite, torch.zeros_like(norm), norm)
            result = self.clipper.decide(safe)
            coef = result.coef
            bad = bad | result.skip.to(device)
        inv = 1.0 / coef.to(torch.float32)
        grad_scale = inv if amp_scale is None else amp_scale.to(torch.float32) * inv
        fused_step_with_scale(
            self.optimizer,
            torch.where(bad, torch.ones_like(grad_scale), grad_scale),
            bad.to(torch.float32),
        )
        if scaler is not None:
            record_scaler_found_inf(scaler, self.optimizer, nonfinite.to(torch.float32))
            scaler.update()
        return StepReport(norm=norm, coef=coef, skipped=bad, clip=result, fused=True)

    def _count(self, report: StepReport, skipped: bool | None = None) -> None:
        """Advance the counters; warn on a skip, raise past ``max_consecutive_skips``.

        ``skipped`` is the verdict already read on the host (the plain path has it), so the
        limit and the warning cost no second read there; the fused path reads it here, and
        only when a limit or warnings are on.
        """
        device = report.skipped.device
        if self._skipped.device != device:
            self._skipped = self._skipped.to(device)
            self._consecutive = self._consecutive.to(device)
            self._last_finite = self._last_finite.to(device)
            self._calls = self._calls.to(device)
        skip = report.skipped.to(torch.int64)
        self._skipped = self._skipped + skip
        self._consecutive = (self._consecutive + 1) * skip
        finite = torch.isfinite(report.norm)
        self._last_finite = torch.where(finite, self._calls, self._last_finite)
        self._calls = self._calls + 1
        limit = self.max_consecutive_skips
        if limit is None and self.warn_every is None:
            return
        if skipped is None:
            skipped = bool(report.skipped)
        if not skipped:
            return
        self._note_skip(report, limit)

    def _note_skip(self, report: StepReport, limit: int | None) -> None:
        # Only on a skipped step: the host reads here never touch the common path.
        call = int(self._calls) - 1
        reason = skip_reason(float(report.norm), self.max_norm_skip, report.clip)
        self._warner.observe(call, True, reason, int(self._skipped))
        if limit is not None and int(self._consecutive) >= limit:
            raise TooManySkippedStepsError(
                f"{int(self._consecutive)} optimizer steps in a row were skipped "
                f"(max_consecutive_skips={limit}); the last because {reason}. Fix the cause, "
                "raise max_consecutive_skips, or pass max_consecutive_skips=None to disable "
                "the limit."
            )

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Counters, settings and the clipper's state (save optimizer and scaler separately)."""
        return {
            "_version": self._version,
            "calls": int(self._calls),
            "skipped": int(self._skipped),
            "consecutive": int(self._consecutive),
            "last_finite": int(self._last_finite),
            "max_norm_skip": self.max_norm_skip,
            "max_consecutive_skips": self.max_consecutive_skips,
            "clipper": None if self.clipper is None else self.clipper.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            ValueError: for a different ``_version``, or a clipper state without a clipper.
        """
        version = state_dict.get("_version")
        if version != self._version:
            raise ValueError(
                f"state_dict has _version {version!r}; GuardedStep expects {self._version}"
            )
        if (state_dict["clipper"] is None) != (self.clipper is None):
            raise ValueError(
                "state_dict['clipper'] and this GuardedStep's clipper must both be set or both "
                "be None"
            )
        if self.clipper is not None:
            self.clipper.load_state_dict(state_dict["clipper"])
        device = self._skipped.device
        self._calls = torch.tensor(int(state_dict["calls"]), device=device)
        self._skipped = torch.tensor(int(state_dict["skipped"]), device=device)
        self._consecutive = torch.tensor(int(state_dict["consecutive"]), device=device)
        self._last_finite = torch.tensor(int(state_dict["last_finite"]), device=device)
        self.max_norm_skip = state_dict["max_norm_skip"]
        self.max_consecutive_skips = state_dict["max_consecutive_skips"]
