"""The demo's figures (matplotlib, Agg backend, imported only when a plot is drawn).

Each function draws one experiment's figure(s) into ``out`` and returns ``{file name: caption}``;
the caption states the verdict of the claim the figure illustrates.
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
    """One line: the claim, its verdict and the checks' numbers."""
    return f"{claim.text} — {claim.verdict.upper()} ({claim.key_numbers()})."


def _claim(result: ExperimentResult, key: str) -> Claim:
    return next(c for c in result.claims if c.key == key)


def _save(fig: Any, out: Path, name: str, claims: list[Claim]) -> str:
    """Write ``fig`` with a verdict line per claim under the axes."""
    lines = [textwrap.shorten(f"Verdict: {c.text} — {c.verdict.upper()}", 150) for c in claims]
    fig.tight_layout(rect=(0, 0.045 * len(lines), 1, 1))
    for i, line in enumerate(lines):
        color = {"held": "#2e7d32", "did not hold": "#c62828"}.get(claims[i].verdict, "#b35900")
        fig.text(
            0.01, 0.045 * (len(lines) - i) - 0.03, line, fontsize=9.5, color=color, weight="bold"
        )
    fig.savefig(out / name, dpi=110)
    _pyplot().close(fig)
    return name


def _finite_positive(values: list[float]) -> list[float]:
    return [v if (v > 0 and math.isfinite(v)) else math.nan for v in values]


def plot_init(result: ExperimentResult, out: Path) -> dict[str, str]:
    """Activation std vs depth per init (log y), and test accuracy per init."""
    from traintech.demo._init_exp import LABELS

    plt = _pyplot()
    n = result.numbers
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    for color, (scheme, stds) in zip(_COLORS, n["activation_std_by_layer"].items(), strict=False):
        label = LABELS[scheme]
        shown = _finite_positive(stds)
        zero_at = next((i + 1 for i, v in enumerate(stds) if v == 0), None)
        if zero_at is not None:
            label += f" (exactly 0 from layer {zero_at})"
        ax1.plot(range(1, len(stds) + 1), shown, color=color, label=label, lw=1.8)
    ax1.set_yscale("log")
    ax1.set_xlabel("hidden layer")
    ax1.set_ylabel("activation std (log scale)")
    ax1.set_title(f"Activation std through a {len(stds)}-layer ReLU MLP at init (digits)")
    ax1.legend(fontsize=8, loc="lower left")
    ax1.grid(True, which="major", alpha=0.3)

    acc = n["test_accuracy"]
    tanh = n["tanh"]
    short = {"he": "He", "xavier": "Xavier", "lecun": "LeCun", "orthogonal": "orth.",
             "lsuv": "LSUV", "auto": "auto", "small": "N(0,.01)"}  # fmt: skip
    names = [f"{short[s]}\nReLU" for s in acc]
    values = list(acc.values())
    names += ["Xavier\ntanh", "He\ntanh"]
    values += [tanh["xavier_accuracy"], tanh["he_accuracy"]]
    colors = [_COLORS[list(LABELS).index(s)] for s in acc] + ["#555555", "#aaaaaa"]
    bars = ax2.bar(range(len(values)), values, color=colors)
    for bar, value in zip(bars, values, strict=True):
        ax2.text(
            bar.get_x() + bar.get_width() / 2, value + 0.01, f"{value:.2f}", ha="center", fontsize=8
        )
    ax2.axhline(0.1, color="k", ls=":", lw=1)
    ax2.text(len(values) - 0.5, 0.115, "chance", ha="right", fontsize=8)
    ax2.set_xticks(range(len(values)), names, fontsize=8)
    ax2.set_ylim(0, 1.08)
    ax2.set_ylabel("test accuracy")
    ax2.set_title(f"Test accuracy after training {result.settings['train_depth']}-layer MLPs")
    claims = [_claim(result, k) for k in ("init.depth", "init.train", "init.tanh")]
    name = _save(fig, out, "init_activation_std.png", claims)
    return {name: " ".join(caption(c) for c in claims)}


def plot_clip(result: ExperimentResult, out: Path) -> dict[str, str]:
    """Training loss and gradient norm per step for each clipping mode (first seed, log y)."""
    from traintech.demo._clip_exp import ClipConfig, label

    plt = _pyplot()
    n = result.numbers
    cfg = ClipConfig(**result.settings)
    seed = n["seeds"][0]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for color, (mode, runs) in zip(_COLORS, n["per_seed"].items(), strict=False):
        run = runs[0]
        steps = range(1, len(run["loss"]) + 1)
        style = {"color": color, "ls": "--" if mode == "zclip" else "-", "label": label(mode, cfg)}
        ax1.plot(steps, _finite_positive(run["loss"]), lw=1.2, **style)
        ax2.plot(steps, _finite_positive(run["grad_norm"]), lw=1.0, **style)
    uniform = n["uniform_guess_loss"]
    ax1.axhline(uniform, color="k", ls=":", lw=1, label=f"uniform guess ({uniform:.2f})")
    for ax, ylabel, title in (
        (
            ax1,
            "training cross-entropy (nats/char, log)",
            f"Loss of a vanilla RNN, SGD lr {result.settings['lr']}",
        ),
        (ax2, "gradient norm before clipping (log)", "Gradient norm per step"),
    ):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} (seed {seed})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    claims = [_claim(result, k) for k in ("clip.explode", "clip.direction", "clip.adaptive")]
    name = _save(fig, out, "clip_curves.png", claims)
    return {name: " ".join(caption(c) for c in claims)}


def plot_norm(result: ExperimentResult, out: Path) -> dict[str, str]:
    """Test accuracy vs batch size per norm, and vs learning rate per norm."""
    from traintech.demo._norm_exp import LABELS

    plt = _pyplot()
    n = result.numbers
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for color, kind in zip(_COLORS, LABELS, strict=False):
        by_bs = n["test_accuracy_by_batch_size"][kind]
        ax1.plot(
            [int(b) for b in by_bs], list(by_bs.values()), "o-", color=color, label=LABELS[kind]
        )
        by_lr = n["test_accuracy_by_lr"][kind]
        ax2.plot(
            [float(r) for r in by_lr], list(by_lr.values()), "o-", color=color, label=LABELS[kind]
        )
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("batch size (log scale)")
    ax1.set_title("Test accuracy vs batch size (small CNN, digits)")
    ax2.set_xscale("log")
    lrs = [float(r) for r in n["test_accuracy_by_lr"]["none"]]
    ax2.set_xticks(lrs, [f"{r:g}" for r in lrs])
    ax2.minorticks_off()
    ax1.set_xticks(
        [int(b) for b in n["test_accuracy_by_batch_size"]["none"]],
        [str(b) for b in n["test_accuracy_by_batch_size"]["none"]],
    )
    ax2.set_xlabel("learning rate (log scale)")
    ax2.set_title(f"Test accuracy vs learning rate (batch {result.settings['lr_batch_size']})")
    for ax in (ax1, ax2):
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.05)
        ax.axhline(0.1, color="k", ls=":", lw=1)
        ax.grid(True, alpha=0.3)
    ax1.legend(fontsize=8, loc="lower right")
    ax2.legend(fontsize=8, loc="lower left")
    claims = [_claim(result, k) for k in ("norm.small_batch", "norm.high_lr")]
    name = _save(fig, out, "norm_accuracy.png", claims)
    return {name: " ".join(caption(c) for c in claims)}


def plot_dropout(result: ExperimentResult, out: Path) -> dict[str, str]:
    """Train/validation curves with and without dropout; entropy histograms for MC dropout."""
    plt = _pyplot()
    n = result.numbers
    run = n["per_seed"][0]
    seed = n["seeds"][0]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, part, title in (
        (axes[0], "char", "Character MLP on a 5K-char slice of the docs"),
        (axes[1], "digits", "MLP on digits"),
    ):
        for color, (name, label) in zip(
            _COLORS,
            (("plain", "no dropout"), ("dropout", f"dropout p={result.settings['p']}")),
            strict=False,
        ):
            curves = run[f"{part}_{name}"]["curves"]
            ax.plot(curves["step"], curves["train"], "--", color=color, label=f"{label}: train")
            ax.plot(curves["step"], curves["val"], "-", color=color, label=f"{label}: validation")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats)" + (", log scale" if part == "digits" else ""))
        if part == "digits":
            ax.set_yscale("log")
        ax.set_title(f"{title} (seed {seed})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    overfit, mc_claim = _claim(result, "dropout.overfit"), _claim(result, "dropout.mc")
    curves_name = _save(fig, out, "dropout_curves.png", [overfit])

    fig, ax = plt.subplots(figsize=(10, 4.8))
    mc = run["mc"]
    bins = [i * 0.1 for i in range(int(math.log(10) / 0.1) + 2)]
    for color, key, label in (
        (_COLORS[2], "entropy_correct", "correct test digits"),
        (_COLORS[3], "entropy_wrong", "misclassified test digits"),
        (_COLORS[4], "entropy_ood", "OOD photo patches"),
    ):
        values = mc[key]
        if values:
            ax.hist(
                values,
                bins=bins,
                density=True,
                alpha=0.5,
                color=color,
                label=f"{label} (n={len(values)}, mean {sum(values) / len(values):.2f})",
            )
    ax.set_xlabel("predictive entropy of the MC-dropout mean (nats)")
    ax.set_ylabel("density")
    ax.set_title(
        f"MC dropout ({result.settings['mc_samples']} samples): OOD AUROC "
        f"{mc['auroc_mc']:.2f} vs {mc['auroc_dropout_off']:.2f} with dropout off "
        f"(seed {seed})"
    )
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    hist_name = _save(fig, out, "dropout_mc_entropy.png", [mc_claim])
    return {curves_name: caption(overfit), hist_name: caption(mc_claim)}


PLOTTERS = {"init": plot_init, "clip": plot_clip, "norm": plot_norm, "dropout": plot_dropout}
