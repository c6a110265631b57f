"""Experiment 4, dropout: the train/validation gap, and Monte Carlo dropout's uncertainty.

1. Digits: an MLP (64-256-256-10) trained on 500 of the training digits with and without
   dropout (p=0.5): on this clean task dropout may change little, and the report says so.
2. A character-level MLP on a small slice of CPython's docs (8 characters of context): without
   dropout it memorizes the slice and its validation cross-entropy climbs. Compared twice: at
   the end of training, and at each run's best validation loss (early stopping), the control
   that asks whether dropout beats simply stopping early.
3. Monte Carlo dropout on the digits MLP: predictive entropy on correct and on misclassified
   test digits and on out-of-distribution patches of scikit-learn's sample photos, and the AUROC
   of entropy for telling those patches from test digits, with MC dropout and with dropout off.
   Samples are pooled across seeds; AUROCs come with a 95% bootstrap interval, and the
   misclassified-digit claim is tested only with at least ``min_pooled`` misclassified digits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from traintech.demo._common import ExperimentResult, Tick, accuracy, effect, mean
from traintech.demo._data import load_digits, load_ood_patches, load_text, take_batches
from traintech.demo._impl import implementation_sources
from traintech.demo._stats import Interval, auroc, bootstrap_auroc
from traintech.demo._verdict import Check, Claim, Effect
from traintech.dropout import Dropout, mc_predict


@dataclass(frozen=True)
class DropoutConfig:
    """Settings of the dropout experiment."""

    p: float = 0.5
    digits_hidden: int = 256
    digits_steps: int = 600
    digits_lr: float = 0.05
    digits_batch: int = 64
    context: int = 8
    embed: int = 16
    char_hidden: int = 256
    char_train_chars: int = 5_000
    char_val_chars: int = 5_000
    char_steps: int = 1000
    char_batch: int = 64
    char_lr: float = 1e-3
    eval_every: int = 100
    digits_train: int = 500
    mc_samples: int = 30
    ood_patches: int = 500
    min_pooled: int = 50
    min_auroc_gain: float = 0.02
    bootstrap: int = 1000

    @classmethod
    def quick(cls) -> DropoutConfig:
        """The ``--quick`` settings."""
        return cls(
            digits_steps=300,
            char_steps=600,
            eval_every=50,
            mc_samples=20,
            ood_patches=300,
            char_val_chars=4_000,
            bootstrap=300,
        )


def digits_mlp(cfg: DropoutConfig, p: float) -> nn.Sequential:
    """64-256-256-10 ReLU MLP with dropout after each hidden activation."""
    dropout = Dropout
    h = cfg.digits_hidden
    return nn.Sequential(
        nn.Linear(64, h),
        nn.ReLU(),
        dropout(p),
        nn.Linear(h, h),
        nn.ReLU(),
        dropout(p),
        nn.Linear(h, 10),
    )


class CharMLP(nn.Module):
    """Embed ``context`` characters, concatenate, two ReLU layers with dropout, read out."""

    def __init__(self, cfg: DropoutConfig, vocab: int, p: float) -> None:
        super().__init__()
        dropout = Dropout
        self.embed = nn.Embedding(vocab, cfg.embed)
        h = cfg.char_hidden
        self.net = nn.Sequential(
            nn.Linear(cfg.context * cfg.embed, h),
            nn.ReLU(),
            dropout(p),
            nn.Linear(h, h),
            nn.ReLU(),
            dropout(p),
            nn.Linear(h, vocab),
        )

    def forward(self, ctx: Tensor) -> Tensor:
        """Logits of the next character given ``(batch, context)`` character ids."""
        return self.net(self.embed(ctx).flatten(1))


def _eval_loss(model: nn.Module, x: Tensor, y: Tensor) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        loss = float(nn.functional.cross_entropy(model(x), y))
    model.train(was)
    return loss


def _fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    steps: int,
    batch: int,
    every: int,
    gen: torch.Generator,
    tick: Tick,
) -> dict[str, list[float]]:
    curves: dict[str, list[float]] = {"step": [], "train": [], "val": []}
    model.train()
    for step, index in enumerate(take_batches(len(y), batch, steps, gen), start=1):
        loss = nn.functional.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % every == 0 or step == steps:
            curves["step"].append(step)
            curves["train"].append(_eval_loss(model, x, y))
            curves["val"].append(_eval_loss(model, x_val, y_val))
    tick()
    return curves


def _char_data(cfg: DropoutConfig) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    text = load_text()
    ids = text.ids
    train = ids[: cfg.char_train_chars + cfg.context]
    val = ids[len(ids) // 2 : len(ids) // 2 + cfg.char_val_chars + cfg.context]

    def windows(seq: Tensor) -> tuple[Tensor, Tensor]:
        ctx = seq.unfold(0, cfg.context + 1, 1)
        return ctx[:, :-1].contiguous(), ctx[:, -1].contiguous()

    x, y = windows(train)
    xv, yv = windows(val)
    return x, y, xv, yv, text.vocab_size


def _entropy(probs: Tensor) -> Tensor:
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


def run_seed(cfg: DropoutConfig, seed: int, tick: Tick) -> dict[str, object]:
    """All three parts of the dropout experiment for one seed."""
    digits = load_digits()
    x_small, y_small = digits.x_train[: cfg.digits_train], digits.y_train[: cfg.digits_train]
    out: dict[str, object] = {}
    models: dict[str, nn.Module] = {}
    for name, p in (("plain", 0.0), ("dropout", cfg.p)):
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        model = digits_mlp(cfg, p)
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.digits_lr, momentum=0.9
        )
        curves = _fit(
            model,
            opt,
            x_small,
            y_small,
            digits.x_test,
            digits.y_test,
            cfg.digits_steps,
            cfg.digits_batch,
            max(1, cfg.eval_every // 4),
            gen,
            tick,
        )
        out[f"digits_{name}"] = {
            "curves": curves,
            "test_accuracy": accuracy(model, digits.x_test, digits.y_test),
            "gap": curves["val"][-1] - curves["train"][-1],
        }
        models[name] = model

    x, y, xv, yv, vocab = _char_data(cfg)
    for name, p in (("plain", 0.0), ("dropout", cfg.p)):
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        char_model = CharMLP(cfg, vocab, p)
        opt = torch.optim.Adam(char_model.parameters(), lr=cfg.char_lr)
        curves = _fit(
            char_model, opt, x, y, xv, yv, cfg.char_steps, cfg.char_batch, cfg.eval_every, gen, tick
        )
        out[f"char_{name}"] = {
            "curves": curves,
            "val_loss": curves["val"][-1],
            "best_val_loss": min(curves["val"]),
            "gap": curves["val"][-1] - curves["train"][-1],
        }

    mc_model = models["dropout"]
    ood = load_ood_patches(cfg.ood_patches)
    gen = torch.Generator().manual_seed(seed)
    test_mc = mc_predict(mc_model, digits.x_test, cfg.mc_samples, gen, task="classification")
    ood_mc = mc_predict(mc_model, ood, cfg.mc_samples, gen, task="classification")
    ent_test, ent_ood = test_mc.entropy, ood_mc.entropy
    assert ent_test is not None and ent_ood is not None  # always set for classification
    correct = test_mc.mean.argmax(-1) == digits.y_test
    with torch.no_grad():
        det: dict[str, tuple[Tensor, Tensor]] = {}
        for name, net in models.items():
            net.eval()
            det[name] = (_entropy(net(digits.x_test).softmax(-1)), _entropy(net(ood).softmax(-1)))
    tick()
    out["mc"] = {
        "entropy_test": ent_test.tolist(),
        "entropy_test_dropout_off": det["dropout"][0].tolist(),
        "correct": correct.tolist(),
        "entropy_ood": ent_ood.tolist(),
        "entropy_ood_dropout_off": det["dropout"][1].tolist(),
        "mc_accuracy": float(correct.float().mean()),
        "auroc_mc": auroc(ent_test, ent_ood),
        "auroc_dropout_off": auroc(*det["dropout"]),
        "auroc_no_dropout_model": auroc(*det["plain"]),
        "auroc_wrong_vs_correct": (
            auroc(ent_test[correct], ent_test[~correct])
            if 0 < int(correct.sum()) < len(correct)
            else math.nan
        ),
    }
    return out


def _pooled(runs: list[dict[str, Any]], key: str) -> Tensor:
    return torch.tensor([v for r in runs for v in r["mc"][key]], dtype=torch.float64)


def run_dropout(cfg: DropoutConfig, seeds: list[int], tick: Tick) -> ExperimentResult:
    """Run the dropout experiment for each seed; return numbers and verdicts."""
    runs: list[dict[str, Any]] = [run_seed(cfg, seed, tick) for seed in seeds]

    def per_seed(part: str, key: str) -> list[float]:
        return [float(r[part][key]) for r in runs]

    def arm_means(task: str, key: str) -> dict[str, float]:
        return {arm: mean(per_seed(f"{task}_{arm}", key)) for arm in ("plain", "dropout")}

    ent = _pooled(runs, "entropy_test")
    ent_off = _pooled(runs, "entropy_test_dropout_off")
    correct = _pooled(runs, "correct").bool()
    ood, ood_off = _pooled(runs, "entropy_ood"), _pooled(runs, "entropy_ood_dropout_off")
    ood_auc = bootstrap_auroc(ent, ood, resamples=cfg.bootstrap)
    ood_gain = bootstrap_auroc(ent, ood, resamples=cfg.bootstrap, baseline=(ent_off, ood_off))
    n_wrong = int((~correct).sum())
    wrong_auc = (
        bootstrap_auroc(ent[correct], ent[~correct], resamples=cfg.bootstrap)
        if n_wrong >= 1
        else (math.nan, math.nan, math.nan)
    )
    summary = {
        "digits_test_accuracy": arm_means("digits", "test_accuracy"),
        "char_val_loss": arm_means("char", "val_loss"),
        "char_best_val_loss": arm_means("char", "best_val_loss"),
        "char_gap": arm_means("char", "gap"),
        "pooled": {
            "test_digits": len(correct),
            "misclassified": n_wrong,
            "ood_patches": len(ood),
            "mean_entropy_correct": float(ent[correct].mean())
            if n_wrong < len(correct)
            else math.nan,
            "mean_entropy_wrong": float(ent[~correct].mean()) if n_wrong else math.nan,
            "mean_entropy_ood": float(ood.mean()),
            "auroc_wrong_vs_correct": list(wrong_auc),
            "auroc_ood_mc": list(ood_auc),
            "auroc_ood_mc_minus_dropout_off": list(ood_gain),
        },
        "mc_accuracy": mean(per_seed("mc", "mc_accuracy")),
    }
    numbers = {"summary": summary, "per_seed": runs, "seeds": seeds}
    return ExperimentResult(
        name="dropout",
        title="Dropout: overfitting with an early-stopping control, and MC-dropout uncertainty",
        settings=asdict(cfg),
        numbers=numbers,
        claims=_claims(cfg, runs, summary),
        sources=implementation_sources("dropout"),
    )


def _boot(
    what: str, est: tuple[float, float, float], per_seed: list[float], n: int, null: float
) -> Effect:
    kind = f"95% bootstrap interval, samples pooled over {n} seed(s)"
    return Effect(what, Interval(est[0], est[1], est[2], kind, tuple(per_seed)), ">", null)


def _claims(cfg: DropoutConfig, runs: list[dict[str, Any]], s: dict[str, Any]) -> list[Claim]:
    def minus(part_a: str, part_b: str, key: str) -> list[float]:
        return [float(r[part_a][key]) - float(r[part_b][key]) for r in runs]

    end_gain = minus("char_plain", "char_dropout", "val_loss")
    best_gain = minus("char_plain", "char_dropout", "best_val_loss")
    acc_gain = minus("digits_dropout", "digits_plain", "test_accuracy")
    setting = (
        f"character MLP on {cfg.char_train_chars:,} characters, Adam lr {cfg.char_lr!r}, "
        f"{cfg.char_steps} steps, p={cfg.p!r}"
    )
    at_end = Claim(
        key="dropout.overfit_end",
        experiment="dropout",
        text="Dropout prevents overfitting: better held-out loss at the end of training",
        compared=f"dropout vs none at the last step ({setting}): no dropout minus dropout = "
        f"{mean(end_gain):+.4g} nats; this is the gain when you train to a fixed budget "
        "without early stopping.",
        checks=[
            Check(
                "final val loss, no dropout minus dropout, mean (nats)", mean(end_gain), ">=", 0.05
            )
        ],
        effects=[effect("final val loss, no dropout minus dropout (nats)", end_gain)],
        note=f"Validation loss every {cfg.eval_every} steps; the end is the last point.",
    )
    at_best = Claim(
        key="dropout.overfit_best",
        experiment="dropout",
        text="Dropout beats early stopping: better best held-out loss",
        compared=f"dropout vs none, each at its best validation point ({setting}): no dropout "
        f"minus dropout = {mean(best_gain):+.4g} nats: "
        + (
            "dropout helps beyond early stopping."
            if mean(best_gain) >= 0.05
            else "with early stopping most of dropout's end-of-training gain disappears."
        ),
        checks=[
            Check(
                "best val loss, no dropout minus dropout, mean (nats)", mean(best_gain), ">=", 0.05
            )
        ],
        effects=[effect("best val loss, no dropout minus dropout (nats)", best_gain)],
        note="The early-stopping control: each run is read at its lowest validation loss.",
    )
    digits = Claim(
        key="dropout.digits",
        experiment="dropout",
        text="Dropout improves test accuracy of an MLP on digits",
        compared=f"64-256-256-10 MLP on {cfg.digits_train} training digits with p={cfg.p!r} vs "
        f"without: dropout minus none = {mean(acc_gain):+.4g} test accuracy.",
        checks=[Check("test accuracy, dropout minus none, mean", mean(acc_gain), ">=", 0.005)],
        effects=[effect("test accuracy, dropout minus none", acc_gain)],
        note=f"SGD momentum 0.9, lr {cfg.digits_lr!r}, {cfg.digits_steps} steps of "
        f"{cfg.digits_batch}.",
    )
    p = s["pooled"]
    n = len(runs)
    per_seed_ood = [float(r["mc"]["auroc_mc"]) for r in runs]
    per_seed_gain = [float(r["mc"]["auroc_mc"]) - float(r["mc"]["auroc_dropout_off"]) for r in runs]
    ood = Claim(
        key="dropout.mc_ood",
        experiment="dropout",
        text="Monte Carlo dropout flags unfamiliar inputs by high predictive entropy",
        compared=f"entropy of the MC-dropout mean ({cfg.mc_samples} samples) on "
        f"{p['ood_patches']} photo patches vs {p['test_digits']} test digits, pooled over {n} "
        f"seed(s): AUROC {p['auroc_ood_mc'][0]:.4g}, {p['auroc_ood_mc_minus_dropout_off'][0]:+.4g} "
        "over the same net with dropout off: "
        + (
            "the sampling adds to a single deterministic pass."
            if p["auroc_ood_mc_minus_dropout_off"][0] >= cfg.min_auroc_gain
            else "a single deterministic pass's entropy does about as well; sampling is not "
            "worth its cost for OOD detection here."
        ),
        checks=[
            Check("OOD AUROC of MC entropy, pooled", p["auroc_ood_mc"][0], ">=", 0.8),
            Check(
                "OOD AUROC, MC dropout minus dropout off, pooled",
                p["auroc_ood_mc_minus_dropout_off"][0],
                ">=",
                cfg.min_auroc_gain,
            ),
        ],
        effects=[
            _boot("OOD AUROC of MC entropy", tuple(p["auroc_ood_mc"]), per_seed_ood, n, 0.5),
            _boot(
                "OOD AUROC, MC dropout minus dropout off",
                tuple(p["auroc_ood_mc_minus_dropout_off"]),
                per_seed_gain,
                n,
                0.0,
            ),
        ],
        note="OOD inputs are 8x8 patches of scikit-learn's sample photos.",
    )
    wrong_text = "Monte Carlo dropout's entropy is higher on misclassified inputs"
    if p["misclassified"] < cfg.min_pooled:
        wrong = Claim(
            key="dropout.mc_wrong",
            experiment="dropout",
            text=wrong_text,
            compared=f"only {p['misclassified']} misclassified digits pooled over {n} seed(s), "
            f"fewer than the {cfg.min_pooled} this comparison needs: run more seeds.",
            note="Not tested: too few misclassified samples for an AUROC interval.",
        )
    else:
        ratio = p["mean_entropy_wrong"] / p["mean_entropy_correct"]
        wrong = Claim(
            key="dropout.mc_wrong",
            experiment="dropout",
            text=wrong_text,
            compared=f"MC-dropout entropy on {p['misclassified']} misclassified vs "
            f"{p['test_digits'] - p['misclassified']} correct test digits, pooled over {n} "
            f"seed(s): AUROC {p['auroc_wrong_vs_correct'][0]:.4g}, mean entropy ratio "
            f"{ratio:.4g}: use the entropy to route doubtful predictions to review.",
            checks=[
                Check(
                    "pooled misclassified digits",
                    float(p["misclassified"]),
                    ">=",
                    float(cfg.min_pooled),
                ),
                Check("entropy wrong / correct, pooled means", ratio, ">=", 2.0),
                Check(
                    "AUROC of entropy, wrong vs correct, pooled",
                    p["auroc_wrong_vs_correct"][0],
                    ">=",
                    0.75,
                ),
            ],
            effects=[
                _boot(
                    "AUROC of entropy, wrong vs correct",
                    tuple(p["auroc_wrong_vs_correct"]),
                    [float(r["mc"]["auroc_wrong_vs_correct"]) for r in runs],
                    n,
                    0.5,
                )
            ],
            note=f"At least {cfg.min_pooled} misclassified samples are required, pooled "
            "across seeds.",
        )
    return [at_end, at_best, digits, ood, wrong]
