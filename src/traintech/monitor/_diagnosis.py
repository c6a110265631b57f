"""Diagnosis rules: turn logged records into plain-word findings that name a technique.

The rules read the records the monitor writes (one dict per logged step, the same objects as
the JSONL lines), so ``Monitor.summary()`` and ``traintech report`` agree.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]

#: Growth of the gradient norm (late median / early median) that counts as exploding.
EXPLODE_GROWTH = 100.0
#: Rise of the loss (median of the last quarter of the steps, or its last finite value before
#: it became NaN/Inf, over the first loss) that counts as diverging...
LOSS_RISE = 4.0
#: ...when the gradient norm also peaked this far above its first value.
DIVERGE_NORM_PEAK = 10.0
#: Per-element gradient RMS of the first weight over the last one that counts as vanishing.
VANISH_RATIO = 1e-3
#: Fraction of dead units of a ReLU-family layer that is reported.
DEAD_FRACTION = 0.5
#: Band of the median update-to-weight ratio outside of which the learning rate is suspect.
UPDATE_RATIO_HIGH = 3e-2
UPDATE_RATIO_LOW = 1e-5
#: Gradient-norm spikes without a loss spike are reported from this many on, or one this large.
GRAD_SPIKES_MIN = 3
GRAD_SPIKE_Z_ALONE = 8.0
#: Fraction of steps clipped above which the clipping threshold is called too low.
CLIPPED_FRACTION = 0.5

_RELU_FAMILY = {"ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU"}
_EMBEDDINGS = {"Embedding", "EmbeddingBag"}


@dataclass(frozen=True)
class Finding:
    """One diagnosis: which rule fired, in plain words, and where.

    Attributes:
        rule: the rule's name (``exploding_gradients``, ``vanishing_gradients``, ``dead_units``,
            ``update_ratio_high``, ``update_ratio_low``, ``nonfinite``, ``spikes``,
            ``clipping_saturated``, ``no_data``).
        message: the symptom and the technique to try.
        layers: the parameters or modules concerned, most affected first.
        steps: the first and last step the rule looked at.
        severity: ``"error"`` (training is broken: non-finite values, divergence, no data),
            ``"warning"`` (training works badly) or ``"info"``.
        evidence: the numbers the rule decided on (name -> value), for a reader to check.
    """

    rule: str
    message: str
    layers: tuple[str, ...] = field(default_factory=tuple)
    steps: tuple[int, int] | None = None
    severity: Severity = "warning"
    evidence: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def advice(self) -> str:
        """The finding's message: the symptom and what to do about it."""
        return self.message


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def _fmt_layers(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + ("..." if len(names) > limit else "")


def _watched_norm(rec: dict[str, Any]) -> float | None:
    clip = rec.get("clip")
    if clip and clip.get("norm") is not None:
        return float(clip["norm"])
    value = rec.get("grad_norm")
    return None if value is None else float(value)


def _weight_params(meta: dict[str, Any]) -> list[str]:
    """Parameters with >= 2 dims in model order, embeddings excluded."""
    modules = meta.get("modules", {})
    out = []
    for name, (shape, _numel) in meta.get("params", {}).items():
        owner = name.rsplit(".", 1)[0] if "." in name else "<model>"
        if len(shape) >= 2 and modules.get(owner) not in _EMBEDDINGS:
            out.append(name)
    return out


def _first(values: Sequence[float]) -> float:
    return values[0] if values else math.nan


def _layer_growth(
    records: list[dict[str, Any]], meta: dict[str, Any], lo: set[int], hi: set[int],
    *, peak: bool,
) -> list[tuple[float, str]]:
    out = []
    for name in meta.get("params", {}):
        a = [r["grad_norms"][name] for r in records if r["step"] in lo and
             r.get("grad_norms", {}).get(name)]
        b = [r["grad_norms"][name] for r in records if r["step"] in hi and
             r.get("grad_norms", {}).get(name)]
        if a and b and _median(a) > 0:
            out.append(((max(b) if peak else _median(b)) / _median(a), name))
    out.sort(reverse=True)
    return out


def _exploding(records: list[dict[str, Any]], meta: dict[str, Any]) -> list[Finding]:
    """Exploding gradients or a diverging loss, visible from the first steps on.

    Two signs, either enough: the gradient norm grew ``EXPLODE_GROWTH``-fold and stayed there
    (median of the last tenth over the first tenth), or the loss rose ``LOSS_RISE``-fold over
    its first value (sustained, or up to the point where it became non-finite) while the
    gradient norm peaked ``DIVERGE_NORM_PEAK``-fold over its first value. No warm-up: three
    logged steps are enough.
    """
    pts = [(r["step"], v) for r in records if (v := _watched_norm(r)) is not None and v > 0]
    losses = [(r["step"], float(r["loss"])) for r in records if r.get("loss") is not None]
    if len(pts) < 3:
        return []
    k = max(1, len(pts) // 10)
    early, late = _median([v for _, v in pts[:k]]), _median([v for _, v in pts[-k:]])
    first_norm, (peak_step, peak) = pts[0][1], max(pts, key=lambda sv: sv[1])
    growth = late / early
    loss_rise = math.nan
    went_nonfinite = any(
        e["kind"] == "nonfinite" for r in records for e in r.get("events", [])
    )
    if len(losses) >= 2 and losses[0][1] > 0:
        q = max(1, len(losses) // 4)
        tail = [v for _, v in losses[-q:]]
        loss_rise = (losses[-1][1] if went_nonfinite else _median(tail)) / losses[0][1]
    diverging = loss_rise >= LOSS_RISE and peak / first_norm >= DIVERGE_NORM_PEAK
    if not (growth >= EXPLODE_GROWTH or diverging):
        return []
    span = pts[-1][0] - pts[0][0]
    lo = {s for s, _ in pts[:k]}
    if growth >= EXPLODE_GROWTH:
        hi = {s for s, _ in pts[-k:]}
        how = f"gradient norm grew 10^{math.log10(growth):.1f} over {span} steps (median " \
            f"{early:.3g} -> {late:.3g})"
        by_layer = _layer_growth(records, meta, lo, hi, peak=False)
    else:
        hi = {s for s, _ in pts}
        how = (
            f"gradient norm grew 10^{math.log10(peak / first_norm):.1f} in {peak_step - pts[0][0]} "
            f"steps ({first_norm:.3g} at step {pts[0][0]} -> {peak:.3g} at step {peak_step})"
        )
        by_layer = _layer_growth(records, meta, lo, hi, peak=True)
    layers = tuple(n for g, n in by_layer if g >= math.sqrt(DIVERGE_NORM_PEAK))
    where = f" in layers {_fmt_layers(layers)}" if layers else ""
    rose = ""
    if loss_rise >= LOSS_RISE:
        end = "before it became non-finite" if went_nonfinite else "and stayed there"
        rose = f"; the loss rose {loss_rise:.3g}-fold from {losses[0][1]:.4g} {end}"
    cap = 2 * min(early, first_norm)
    clip = (
        f"clip the gradient norm at about {cap:.3g} (traintech.clip.NormClip(max_norm="
        f"{cap:.3g}) in a GuardedStep, or ZClip(max_grad_norm={cap:.3g}), which caps from the "
        "first step); for RNNs an orthogonal recurrent init"
    )
    if rose:
        message = (
            f"{how}{where}{rose}: exploding gradients, the training diverges. Lower the "
            f"learning rate (a rising loss means it is too high) and {clip}."
        )
    else:
        message = f"{how}{where}: exploding gradients. Clip: {clip}; or lower the learning rate."
    evidence = {
        "first_norm": first_norm, "peak_norm": peak, "peak_step": peak_step,
        "early_median": early, "late_median": late, "growth": growth, "loss_rise": loss_rise,
    }
    return [Finding("exploding_gradients", message, layers, (pts[0][0], pts[-1][0]), "error",
                    evidence)]


def _vanishing(records: list[dict[str, Any]], meta: dict[str, Any]) -> list[Finding]:
    weights = _weight_params(meta)
    if len(weights) < 3 or not records:
        return []
    recent = records[len(records) // 2 :]
    rms: dict[str, float] = {}
    for name in weights:
        numel = meta["params"][name][1]
        vals = [r["grad_norms"][name] for r in recent if r.get("grad_norms", {}).get(name)]
        if vals:
            rms[name] = _median(vals) / math.sqrt(numel)
    present = [n for n in weights if n in rms]
    if len(present) < 3 or rms[present[-1]] <= 0:
        return []
    last = rms[present[-1]]
    ratio = rms[present[0]] / last
    if not ratio <= VANISH_RATIO:
        return []
    small = tuple(n for n in present[:-1] if rms[n] / last <= VANISH_RATIO)
    message = (
        f"gradients vanish toward the input: the per-element gradient RMS of "
        f"'{present[0]}' is 10^{math.log10(max(ratio, 1e-300)):.1f} of the last layer's "
        f"('{present[-1]}'); affected: {_fmt_layers(small)}. Use a variance-preserving init "
        "(traintech.init.init_model: He for ReLU, Xavier for tanh/sigmoid), add normalization "
        "(LayerNorm/BatchNorm) or residual connections, or a non-saturating activation "
        "(ReLU family instead of sigmoid/tanh)."
    )
    evidence = {"first_rms": rms[present[0]], "last_rms": last, "ratio": ratio}
    return [Finding("vanishing_gradients", message, small, (recent[0]["step"], recent[-1]["step"]),
                    "warning", evidence)]


def _dead_units(records: list[dict[str, Any]], meta: dict[str, Any]) -> list[Finding]:
    sampled = [r for r in records if r.get("activations")][-5:]
    if not sampled:
        return []
    modules = meta.get("modules", {})
    dead = []
    for name, mtype in modules.items():
        if mtype not in _RELU_FAMILY:
            continue
        vals = [r["activations"][name]["dead"] for r in sampled
                if r["activations"].get(name, {}).get("dead") is not None]
        if vals and (frac := statistics.fmean(vals)) >= DEAD_FRACTION:
            dead.append((frac, name))
    if not dead:
        return []
    dead.sort(reverse=True)
    worst_frac, worst = dead[0]
    layers = tuple(n for _, n in dead)
    message = (
        f"{worst_frac:.0%} of the units of '{worst}' ({modules[worst]}) output 0 for a whole "
        f"batch (dead ReLUs; layers {_fmt_layers(layers)}). Re-initialize with He init "
        "(traintech.init.kaiming_normal_) and zero biases, use LeakyReLU/GELU, or lower the "
        "learning rate."
    )
    evidence = {"dead_fraction": {n: f for f, n in dead}}
    return [Finding("dead_units", message, layers, (sampled[0]["step"], sampled[-1]["step"]),
                    "warning", evidence)]


def _update_ratio(records: list[dict[str, Any]], meta: dict[str, Any]) -> list[Finding]:
    sampled = [r for r in records if r.get("update_ratio")][-10:]
    weights = set(_weight_params(meta))
    per_layer: dict[str, list[float]] = {}
    for r in sampled:
        for name, v in r["update_ratio"].items():
            if name in weights and v is not None:
                per_layer.setdefault(name, []).append(v)
    if not per_layer:
        return []
    medians = {n: _median(v) for n, v in per_layer.items()}
    overall = _median(list(medians.values()))
    steps = (sampled[0]["step"], sampled[-1]["step"])
    if overall > UPDATE_RATIO_HIGH:
        layers = tuple(sorted((n for n in medians if medians[n] > UPDATE_RATIO_HIGH),
                              key=lambda n: -medians[n]))
        message = (
            f"median update/weight ratio is {overall:.2g} (healthy: about 1e-3; layers "
            f"{_fmt_layers(layers)}): each step moves the weights by a large fraction; the "
            f"learning rate looks too high, try about x{1e-3 / overall:.2g} (or a warmup)."
        )
        return [Finding("update_ratio_high", message, layers, steps, "warning",
                        {"median_update_ratio": overall})]
    if overall == 0.0:
        message = (
            "the weights do not change at all (update/weight ratio 0): the gradients are zero "
            "(dead units, a detached graph) or the learning rate is 0."
        )
        return [Finding("update_ratio_low", message, tuple(sorted(medians)), steps, "warning",
                        {"median_update_ratio": 0.0})]
    if overall < UPDATE_RATIO_LOW:
        layers = tuple(sorted((n for n in medians if medians[n] < UPDATE_RATIO_LOW),
                              key=lambda n: medians[n]))
        message = (
            f"median update/weight ratio is {overall:.2g} (healthy: about 1e-3; layers "
            f"{_fmt_layers(layers)}): the weights barely move; the learning rate looks too "
            f"low, try about x{1e-3 / overall:.2g}, or check for vanishing "
            "gradients."
        )
        return [Finding("update_ratio_low", message, layers, steps, "warning",
                        {"median_update_ratio": overall})]
    return []


def _nonfinite(records: list[dict[str, Any]], meta: dict[str, Any]) -> list[Finding]:
    events = [e for r in records for e in r.get("events", []) if e["kind"] == "nonfinite"]
    if not events:
        return []
    first = events[0]
    layers = (first["module"],) if first.get("module") else ()
    message = (
        f"{len(events)} step(s) with NaN/Inf; first at {first['message']}. Check the data "
        "and that operation (add an eps to divisions, logs and square roots; compute it in "
        "float32), lower the learning rate, and guard the step so non-finite updates are "
        "skipped (traintech.clip guarded step)."
    )
    evidence = {"nonfinite_steps": len(events), "first_step": first["step"],
                "phase": first.get("phase")}
    return [Finding("nonfinite", message, layers, (first["step"], events[-1]["step"]), "error",
                    evidence)]


def _spikes(records: list[dict[str, Any]], meta: dict[str, Any]) -> list[Finding]:
    events = [e for r in records for e in r.get("events", [])
              if e["kind"] in ("loss_spike", "grad_spike")]
    if not events:
        return []
    loss = [e for e in events if e["kind"] == "loss_spike"]
    grad = [e for e in events if e["kind"] == "grad_spike"]
    grad_zmax = max((e["z"] for e in grad if e.get("z") is not None), default=0.0)
    if not loss and len(grad) < GRAD_SPIKES_MIN and grad_zmax < GRAD_SPIKE_Z_ALONE:
        return []  # a lone, moderate gradient-norm spike is within heavy-tailed noise
    shown = sorted({e["step"] for e in events})
    steps_txt = ", ".join(str(s) for s in shown[:8]) + ("..." if len(shown) > 8 else "")
    zmax = max((e["z"] for e in events if e.get("z") is not None), default=math.nan)
    message = (
        f"{len(loss)} loss spike(s) and {len(grad)} gradient-norm spike(s) (steps {steps_txt}; "
        f"largest z = {zmax:.1f}). Use adaptive clipping (traintech.clip.ZClip or EMAClip), a "
        "longer warmup or a lower peak learning rate; for spikes that persist, RollbackGuard "
        "rewinds to the last good state and skips the batches."
    )
    evidence = {"loss_spikes": len(loss), "grad_spikes": len(grad), "max_z": zmax}
    return [Finding("spikes", message, (), (shown[0], shown[-1]), "warning", evidence)]


def _clipping(records: list[dict[str, Any]], meta: dict[str, Any]) -> list[Finding]:
    clipped = [r for r in records if r.get("clip") and r["clip"].get("coef") is not None]
    if len(clipped) < 10:
        return []
    frac = sum(r["clip"]["coef"] < 1.0 for r in clipped) / len(clipped)
    if frac <= CLIPPED_FRACTION:
        return []
    norms = sorted(r["clip"]["norm"] for r in clipped if r["clip"].get("norm") is not None)
    p90 = norms[int(0.9 * (len(norms) - 1))] if norms else math.nan
    names = [r["clip"].get("clipper") for r in clipped if r["clip"].get("clipper")]
    clipper = names[-1] if names else None
    thresholds = [r["clip"]["threshold"] for r in clipped
                  if r["clip"].get("threshold") is not None]
    threshold = _median(thresholds) if thresholds else math.nan
    message = (
        f"clipping scaled the gradients on {frac:.0%} of the steps (median threshold "
        f"{threshold:.3g}, 90th percentile of the norms {p90:.3g}): the threshold is below the "
        f"typical norm, which silently lowers the learning rate. {_clip_fix(clipper, p90)}"
    )
    evidence = {"clipped_fraction": frac, "threshold": threshold, "norm_p90": p90,
                "clipper": clipper}
    return [Finding("clipping_saturated", message, (), (clipped[0]["step"], clipped[-1]["step"]),
                    "warning", evidence)]


def _clip_fix(clipper: str | None, p90: float) -> str:
    """What to change, for the clipper that is running (never recommend the one in use)."""
    if clipper == "ZClip":
        return (
            f"ZClip's max_grad_norm cap is what clips here: raise it to about {p90:.3g} "
            "(ZClip(max_grad_norm=...)) or pass max_grad_norm=None to let the z-score rule "
            "alone decide."
        )
    if clipper in ("QuantileClip", "EMAClip"):
        return (
            f"{clipper}'s threshold follows the norms but clips most of them: raise its "
            "quantile/factor, or its max_norm cap if one is set, or use ZClip(max_grad_norm="
            f"{p90:.3g}) to clip spikes only."
        )
    if clipper == "AGC":
        return "AGC clips most units: raise its clip_factor (e.g. x10)."
    if clipper == "ValueClip":
        return (
            f"raise clip_value, or clip the norm instead (NormClip(max_norm={p90:.3g}) keeps "
            "the gradient's direction)."
        )
    named = f"{clipper}'s " if clipper else ""
    return (
        f"Raise {named}threshold to about {p90:.3g} (the 90th percentile of the norms) or use an "
        "adaptive threshold (ZClip, QuantileClip)."
    )


_RULES = (_nonfinite, _exploding, _vanishing, _dead_units, _update_ratio, _spikes, _clipping)

#: Rules whose advice would point the wrong way when the rule on the left fired: a diverging
#: run is not helped by a higher learning rate, and small updates whose cause is named
#: (vanishing gradients, dead units, saturated clipping) need that cause fixed instead.
_SUPERSEDES = {
    "exploding_gradients": ("vanishing_gradients", "update_ratio_low"),
    "nonfinite": ("update_ratio_low",),
    "vanishing_gradients": ("update_ratio_low",),
    "dead_units": ("update_ratio_low",),
    "clipping_saturated": ("update_ratio_low",),
}

NO_DATA_MESSAGE = (
    "no training step was logged, so nothing can be said about this run's health: call "
    "monitor.step(loss=...) after each optimizer.step() (and check the log folder and `every`)."
)


def no_data(where: str = "") -> Finding:
    """The finding for a run with nothing to diagnose (``where``: e.g. the log's path)."""
    message = NO_DATA_MESSAGE if not where else f"{where}: {NO_DATA_MESSAGE}"
    return Finding("no_data", message, (), None, "error", {"records": 0})


def diagnose(records: Sequence[dict[str, Any]], meta: dict[str, Any]) -> list[Finding]:
    """Apply every rule to the logged ``records`` of a run described by ``meta``.

    Args:
        records: logged steps in order (``Monitor.history`` or the JSONL lines).
        meta: the run description (``Monitor.meta``, the JSONL ``meta`` line).

    Returns:
        The findings, most severe rule first; empty when nothing looks wrong, and a single
        ``no_data`` finding when no step was logged (no data is not a healthy run).
    """
    steps = [r for r in records if "step" in r]
    if not any("loss" in r or "grad_norm" in r or r.get("events") for r in steps):
        return [no_data()]
    findings: list[Finding] = []
    for rule in _RULES:
        findings += rule(steps, meta)
    fired = {f.rule for f in findings}
    dropped = {r for k, rs in _SUPERSEDES.items() if k in fired for r in rs}
    findings = [f for f in findings if f.rule not in dropped]
    if fired & {"exploding_gradients", "update_ratio_high"}:
        findings = [_clipping_holds_back_lr(f) if f.rule == "clipping_saturated" else f
                    for f in findings]
    return findings


def _clipping_holds_back_lr(finding: Finding) -> Finding:
    """Saturated clipping in a run whose learning rate is too high: keep the clip, lower the LR.

    Raising the threshold would hand the full, too large step back to the optimizer.
    """
    ev = finding.evidence
    message = (
        f"clipping scaled the gradients on {ev['clipped_fraction']:.0%} of the steps (median "
        f"threshold {ev['threshold']:.3g}, 90th percentile of the norms {ev['norm_p90']:.3g}), "
        "and the updates are still large or the gradients explode: the clipping is holding "
        "back a learning rate that is too high. Keep the threshold and lower the learning "
        "rate until clipping is rare; do not raise the threshold first."
    )
    return replace(finding, message=message, evidence={**ev, "lr_too_high": True})


def format_findings(findings: Sequence[Finding]) -> str:
    """The findings as plain text, one paragraph each."""
    if not findings:
        return "No problems found: gradients, updates, activations and loss look healthy."
    lines = [f"{len(findings)} problem(s) found:"]
    for f in findings:
        lines.append(f"- [{f.rule}] {f.message}")
    return "\n".join(lines)
