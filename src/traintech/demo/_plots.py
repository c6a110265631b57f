"""The demo's figures (matplotlib, Agg backend, imported only when a plot is drawn).

Each function draws one experiment's figure(s) into ``out`` and returns ``{file name: caption}``.
Every panel that a check or effect reads shows exactly those numbers (per seed, pooled, or the
worst seed, as the check uses them); training curves, which no check reads, show seed 0 and say
so. The caption and the lines under the axes state the verdicts.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from traintech.demo._common import ExperimentResult
from traintech.demo._data import require
from traintech.demo._verdict import Claim

_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#7f7f7f"]


def _pyplot() -> Any:
    matplotlib = require("matplotlib")
    matplotlib.use("Agg", force=True)
    return require("matplotlib.pyplot")


def caption(claim: Claim) -> str:
    """The claim's verdict sentence."""
    return f"{claim.text}: {claim.verdict.upper()}. {claim.sentence}"


def _claims(result: ExperimentResult, prefix: str = "") -> list[Claim]:
    return [c for c in result.claims if c.key.startswith(prefix)]


def _save(fig: Any, out: Path, name: str, claims: list[Claim]) -> str:
    """Write ``fig`` with the verdict lines of ``claims`` under the axes (wrapped, never cut)."""
    lines: list[tuple[str, str]] = []
    for c in claims:
        for i, line in enumerate(textwrap.wrap(f"{c.verdict.upper()}: {c.text}", 150)):
            lines.append((line if i == 0 else "    " + line, c.verdict))
    height = fig.get_size_inches()[1]
    step = 0.22 / height
    fig.tight_layout(rect=(0, step * len(lines) + 0.01, 1, 1))
    for i, (line, verdict) in enumerate(lines):
        color = {"held": "#2e7d32", "did not hold": "#c62828"}.get(verdict, "#b35900")
        fig.text(0.01, step * (len(lines) - i) - step * 0.8, line, fontsize=9, color=color)
    fig.savefig(out / name, dpi=100)
    _pyplot().close(fig)
    return name


def _save_captioned(fig: Any, out: Path, name: str, result: ExperimentResult) -> dict[str, str]:
    """Save ``fig`` under the verdicts of all ``result``'s claims; return ``{file: caption}``."""
    claims = _claims(result)
    return {_save(fig, out, name, claims): " ".join(caption(c) for c in claims)}


def _finite_positive(values: list[float]) -> list[float]:
    return [
        v if (isinstance(v, float | int) and v > 0 and math.isfinite(v)) else math.nan
        for v in values
    ]


def _seed_dots(ax: Any, labels: list[str], per_seed: list[list[float]], ylabel: str) -> None:
    """Each seed's value as a dot, the mean as a bar; non-finite values drawn at the top, marked."""
    finite = [v for vs in per_seed for v in vs if math.isfinite(v) and v > 0]
    top = max(finite) * 3 if finite else 10.0
    for i, values in enumerate(per_seed):
        shown = [v if math.isfinite(v) else top for v in values]
        if all(math.isfinite(v) for v in values):
            ax.bar(i, sum(values) / len(values), color="#cccccc", width=0.6)
        ax.scatter([i] * len(shown), shown, color="k", zorder=3, s=14)
        if any(not math.isfinite(v) for v in values):
            ax.text(i, top, "diverged", ha="center", va="bottom", fontsize=7, color="#c62828")
    ax.set_yscale("log")
    ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)


def plot_init(result: ExperimentResult, out: Path) -> dict[str, str]:
    """Activation std vs depth per init (mean over seeds, log y), and test accuracy per init."""
    from traintech.demo._init_exp import LABELS

    plt = _pyplot()
    n = result.numbers
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5.2), gridspec_kw={"width_ratios": [3, 2]})
    depth = 0
    for color, (scheme, stds) in zip(_COLORS, n["activation_std_by_layer"].items(), strict=False):
        label = LABELS[scheme]
        zero_at = next((i + 1 for i, v in enumerate(stds) if v == 0), None)
        if zero_at is not None:
            label += f" (exactly 0 from layer {zero_at})"
        ax1.plot(range(1, len(stds) + 1), _finite_positive(stds), color=color, label=label, lw=1.8)
        depth = len(stds)
    ax1.set_yscale("log")
    ax1.set_xlabel("hidden layer")
    ax1.set_ylabel("activation std (log scale), mean over seeds")
    ax1.set_title(f"Activation std through a {depth}-layer ReLU MLP at init (digits)")
    ax1.legend(fontsize=8, loc="lower left")
    ax1.grid(True, which="major", alpha=0.3)
    acc = n["test_accuracy"]
    per = n["per_seed"]
    short = {"he": "He", "xavier": "Xavier", "lecun": "LeCun", "orthogonal": "orth.",
             "lsuv": "LSUV", "auto": "auto", "small": "N(0,.01)"}  # fmt: skip
    names = [f"{short[s]}\nReLU" for s in acc] + ["Xavier\ntanh", "He\ntanh"]
    seeds = [[a[s] for a in per["accuracy"]] for s in acc]
    seeds += [[t["xavier_accuracy"] for t in per["tanh"]], [t["he_accuracy"] for t in per["tanh"]]]
    for i, values in enumerate(seeds):
        ax2.bar(i, sum(values) / len(values), color="#cccccc")
        ax2.scatter([i] * len(values), values, color="k", s=12, zorder=3)
    ax2.axhline(0.1, color="k", ls=":", lw=1)
    ax2.set_xticks(range(len(names)), names, fontsize=8)
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("test accuracy (bar: mean; dots: seeds)")
    ax2.set_title(f"After training {result.settings['train_depth']}-layer MLPs")
    return _save_captioned(fig, out, "init_activation_std.png", result)


def plot_clip(result: ExperimentResult, out: Path) -> dict[str, str]:
    """RNN training loss per step (seed 0), and each arm's validation loss per seed."""
    from traintech.demo._clip_exp import MODES, ClipConfig, label

    plt = _pyplot()
    n = result.numbers
    cfg = ClipConfig(**result.settings)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5.2))
    for color, mode in zip(_COLORS, MODES, strict=False):
        run = n["per_seed"][mode][0]
        ax1.plot(
            range(1, len(run["loss"]) + 1),
            _finite_positive(run["loss"]),
            lw=1.1,
            color=color,
            label=f"{label(mode, cfg)} (lr {run['lr']:.4g})",
        )
    uniform = n["uniform_guess_loss"]
    ax1.axhline(uniform, color="k", ls=":", lw=1, label=f"uniform guess ({uniform:.4g})")
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_ylabel("training cross-entropy (nats/char, log)")
    ax1.set_title(f"Vanilla RNN, training loss (seed {n['seeds'][0]}; no check reads this)")
    ax1.legend(fontsize=7)
    ax1.grid(True, alpha=0.3)
    _seed_dots(
        ax2,
        [label(m, cfg) for m in MODES],
        [[float(r["val_loss"]) for r in n["per_seed"][m]] for m in MODES],
        "val cross-entropy (log)",
    )
    ax2.axhline(uniform, color="k", ls=":", lw=1)
    ax2.set_title("Val loss per arm (bar: mean, dots: seeds)")
    return _save_captioned(fig, out, "clip_curves.png", result)


def plot_transformer(result: ExperimentResult, out: Path) -> dict[str, str]:
    """Loss curves (seed 0) of the norm and clip arms; validation loss per arm and seed."""
    from traintech.demo._transformer_exp import NORM_LABELS, TransformerConfig, clip_label

    plt = _pyplot()
    n = result.numbers
    settings: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in result.settings.items()
    }
    cfg = TransformerConfig(**settings)
    per = n["per_seed"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2))
    for color, (norm, runs) in zip(_COLORS, per["norm"].items(), strict=False):
        axes[0].plot(_finite_positive(runs[0]["loss"]), color=color, lw=1, label=NORM_LABELS[norm])
    axes[0].set_title(f"Adam lr {cfg.norm_lr!r}: training loss (seed {n['seeds'][0]})")
    for color, (mode, runs) in zip(_COLORS, per["clip"].items(), strict=False):
        axes[1].plot(
            _finite_positive(runs[0]["loss"]),
            color=color,
            lw=1,
            label=f"{clip_label(mode, cfg)} (lr {runs[0]['lr']:.4g})",
        )
    axes[1].set_title(f"SGD lr {cfg.clip_lr!r}: training loss (seed {n['seeds'][0]})")
    for ax in axes[:2]:
        ax.set_yscale("log")
        ax.set_xlabel("step (a curve that stops has diverged)")
        ax.set_ylabel("training cross-entropy (log)")
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    arms = [("norm", k, NORM_LABELS[k]) for k in per["norm"]]
    arms += [("clip", k, clip_label(k, cfg)) for k in per["clip"]]
    _seed_dots(
        axes[2],
        [text for _, _, text in arms],
        [[float(r["val_loss"]) for r in per[part][key]] for part, key, _ in arms],
        "val cross-entropy (log)",
    )
    axes[2].axvline(len(per["norm"]) - 0.5, color="k", lw=0.8)
    axes[2].set_title("Val loss per arm (bar: mean, dots: seeds)")
    return _save_captioned(fig, out, "transformer.png", result)


def plot_norm(result: ExperimentResult, out: Path) -> dict[str, str]:
    """Accuracy vs batch size (per seed and mean), and every seed's accuracy vs learning rate."""
    from traintech.demo._norm_exp import LABELS

    plt = _pyplot()
    n = result.numbers
    per = n["per_seed"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5.2))
    for color, kind in zip(_COLORS, LABELS, strict=False):
        by_bs = per["by_batch_size"][kind]
        sizes = [int(b) for b in by_bs]
        ax1.plot(
            sizes,
            [sum(v) / len(v) for v in by_bs.values()],
            "-",
            color=color,
            label=f"{LABELS[kind]} (line: mean, dots: seeds)",
        )
        for b, values in zip(sizes, by_bs.values(), strict=True):
            ax1.scatter([b] * len(values), values, color=color, s=12)
        by_lr = per["by_lr"][kind]
        lrs = [float(r) for r in by_lr]
        n_seeds = len(next(iter(by_lr.values())))
        for s in range(n_seeds):
            ax2.plot(
                lrs,
                [v[s] for v in by_lr.values()],
                "o-",
                color=color,
                lw=1,
                ms=3,
                alpha=0.8,
                label=LABELS[kind] + " (each seed)" if s == 0 else None,
            )
    trains_at = result.settings["trains_at"]
    ax2.axhline(trains_at, color="k", ls="--", lw=1, label=f"trains: accuracy >= {trains_at!r}")
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(sizes, [str(b) for b in sizes])
    ax1.set_xlabel("batch size (log scale)")
    ax1.set_title(f"Residual CNN: test accuracy vs batch size (lr {result.settings['lr']!r})")
    ax2.set_xscale("log")
    ax2.set_xticks(lrs, [f"{r:g}" for r in lrs])
    ax2.minorticks_off()
    ax2.set_xlabel("learning rate (log scale), the same grid for every variant")
    ax2.set_title(f"Test accuracy vs lr, every seed (batch {result.settings['lr_batch_size']})")
    for ax in (ax1, ax2):
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.05)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    return _save_captioned(fig, out, "norm_accuracy.png", result)


def plot_dropout(result: ExperimentResult, out: Path) -> dict[str, str]:
    """Char-MLP curves per seed with each run's best point; pooled MC-dropout entropy histograms."""
    plt = _pyplot()
    n = result.numbers
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    p = result.settings["p"]
    for color, (name, text) in zip(
        _COLORS, (("plain", "no dropout"), ("dropout", f"dropout p={p}")), strict=False
    ):
        for s, run in enumerate(n["per_seed"]):
            curves = run[f"char_{name}"]["curves"]
            first = s == 0
            for key, style, lw, what in (
                ("train", "--", 0.8, "train"),
                ("val", "-", 1.2, "validation (each seed)"),
            ):
                axes[0].plot(
                    curves["step"],
                    curves[key],
                    style,
                    color=color,
                    lw=lw,
                    label=f"{text}: {what}" if first else None,
                )
            best = min(range(len(curves["val"])), key=lambda i: curves["val"][i])
            axes[0].scatter(
                [curves["step"][best]],
                [curves["val"][best]],
                color=color,
                marker="*",
                s=60,
                zorder=3,
                label=f"{text}: best (early stop)" if first else None,
            )
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("cross-entropy (nats)")
    axes[0].set_title("Character MLP on a 5K-char slice: end and best points")
    axes[0].legend(fontsize=7)
    axes[0].grid(True, alpha=0.3)
    pooled = n["summary"]["pooled"]
    correct = [c for r in n["per_seed"] for c in r["mc"]["correct"]]
    ent = [e for r in n["per_seed"] for e in r["mc"]["entropy_test"]]
    ood = [e for r in n["per_seed"] for e in r["mc"]["entropy_ood"]]
    groups = (
        ("correct test digits", [e for e, ok in zip(ent, correct, strict=True) if ok]),
        ("misclassified test digits", [e for e, ok in zip(ent, correct, strict=True) if not ok]),
        ("OOD photo patches", ood),
    )
    bins = [i * 0.1 for i in range(int(math.log(10) / 0.1) + 2)]
    for color, (text, values) in zip(_COLORS[2:], groups, strict=False):
        if values:
            axes[1].hist(
                values,
                bins=bins,
                density=True,
                alpha=0.5,
                color=color,
                label=f"{text} (n={len(values)}, mean {sum(values) / len(values):.3g})",
            )
    auc, gain = pooled["auroc_ood_mc"], pooled["auroc_ood_mc_minus_dropout_off"]
    axes[1].set_title(
        f"MC dropout, pooled over {len(n['seeds'])} seed(s): OOD AUROC {auc[0]:.3g} "
        f"[{auc[1]:.3g}, {auc[2]:.3g}],\nminus dropout off: {gain[0]:+.3g} "
        f"[{gain[1]:+.3g}, {gain[2]:+.3g}] (95% bootstrap)",
        fontsize=10,
    )
    axes[1].set_xlabel("predictive entropy of the MC-dropout mean (nats)")
    axes[1].set_ylabel("density")
    axes[1].legend(fontsize=7)
    axes[1].grid(True, alpha=0.3)
    return _save_captioned(fig, out, "dropout.png", result)


PLOTTERS = {
    "init": plot_init,
    "clip": plot_clip,
    "transformer": plot_transformer,
    "norm": plot_norm,
    "dropout": plot_dropout,
}
