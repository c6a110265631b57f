"""Experiment 4, dropout: the train/validation gap, and Monte Carlo dropout's uncertainty.

1. Clean digits: an MLP (64-256-256-10) trained with and without dropout (p=0.5): on this easy,
   clean task dropout may change nothing, and the report says so.
2. A character-level MLP on a small slice of CPython's docs (8 characters of context): without
   dropout it memorizes the slice and its validation cross-entropy climbs; with p=0.5 it does not.
3. Monte Carlo dropout on the digits MLP: predictive entropy on correct and on misclassified
   test digits and on out-of-distribution patches of scikit-learn's sample photos, and the AUROC
   of entropy for telling those patches from test digits, with MC dropout and with dropout off.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from traintech.demo._common import ExperimentResult, Tick, accuracy, mean
from traintech.demo._data import load_digits, load_ood_patches, load_text, take_batches
from traintech.demo._impl import implementation_sources
from traintech.demo._verdict import Check, Claim
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
    mc_samples: int = 30
    ood_patches: int = 500

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


def auroc(negatives: Tensor, positives: Tensor) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    scores = torch.cat([negatives, positives]).double()
    ranks = torch.empty_like(scores)
    order = scores.argsort()
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    for value in scores.unique():  # average ranks over ties
        tie = scores == value
        if int(tie.sum()) > 1:
            ranks[tie] = ranks[tie].mean()
    n_pos, n_neg = len(positives), len(negatives)
    rank_sum = float(ranks[len(negatives) :].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _entropy(probs: Tensor) -> Tensor:
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


def run_seed(cfg: DropoutConfig, seed: int, tick: Tick) -> dict[str, object]:
    """All three parts of the dropout experiment for one seed."""
    digits = load_digits()
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
            digits.x_train,
            digits.y_train,
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
        "entropy_correct": ent_test[correct].tolist(),
        "entropy_wrong": ent_test[~correct].tolist(),
        "entropy_ood": ent_ood.tolist(),
        "mc_accuracy": float(correct.float().mean()),
        "auroc_mc": auroc(ent_test, ent_ood),
        "auroc_dropout_off": auroc(*det["dropout"]),
        "auroc_no_dropout_model": auroc(*det["plain"]),
    }
    return out


def run_dropout(cfg: DropoutConfig, seeds: list[int], tick: Tick) -> ExperimentResult:
    """Run the dropout experiment for each seed; return numbers and verdicts."""
    runs = [run_seed(cfg, seed, tick) for seed in seeds]

    def avg(part: str, key: str) -> float:
        return mean([float(r[part][key]) for r in runs])  # type: ignore[index]

    def avg_entropy(key: str) -> float:
        return mean([mean(r["mc"][key]) if r["mc"][key] else math.nan for r in runs])  # type: ignore[index]

    summary = {
        "digits_test_accuracy": {
            "plain": avg("digits_plain", "test_accuracy"),
            "dropout": avg("digits_dropout", "test_accuracy"),
        },
        "digits_gap": {
            "plain": avg("digits_plain", "gap"),
            "dropout": avg("digits_dropout", "gap"),
        },
        "char_val_loss": {
            "plain": avg("char_plain", "val_loss"),
            "dropout": avg("char_dropout", "val_loss"),
        },
        "char_best_val_loss": {
            "plain": avg("char_plain", "best_val_loss"),
            "dropout": avg("char_dropout", "best_val_loss"),
        },
        "char_gap": {"plain": avg("char_plain", "gap"), "dropout": avg("char_dropout", "gap")},
        "mean_entropy": {k: avg_entropy(f"entropy_{k}") for k in ("correct", "wrong", "ood")},
        "auroc": {
            "mc_dropout": avg("mc", "auroc_mc"),
            "dropout_off": avg("mc", "auroc_dropout_off"),
            "no_dropout_model": avg("mc", "auroc_no_dropout_model"),
        },
        "mc_accuracy": avg("mc", "mc_accuracy"),
    }
    numbers = {"summary": summary, "per_seed": runs, "seeds": seeds}
    return ExperimentResult(
        name="dropout",
        title="Dropout: overfitting, and uncertainty with Monte Carlo dropout",
        settings=asdict(cfg),
        numbers=numbers,
        claims=_claims(cfg, summary),
        sources=implementation_sources("dropout"),
    )


def _claims(cfg: DropoutConfig, s: dict[str, Any]) -> list[Claim]:
    acc, dgap = s["digits_test_accuracy"], s["digits_gap"]
    val, cgap = s["char_val_loss"], s["char_gap"]
    ent, roc = s["mean_entropy"], s["auroc"]
    assert isinstance(acc, dict) and isinstance(dgap, dict) and isinstance(val, dict)
    assert isinstance(cgap, dict) and isinstance(ent, dict) and isinstance(roc, dict)
    gap_ratio = cgap["dropout"] / cgap["plain"] if cgap["plain"] > 0 else math.nan
    overfit = Claim(
        key="dropout.overfit",
        experiment="dropout",
        text="Dropout prevents overfitting: it closes the train/test gap and improves held-out "
        "loss",
        checks=[
            Check(
                "char-MLP val loss, no dropout minus dropout (nats)",
                val["plain"] - val["dropout"],
                ">=",
                0.2,
            ),
            Check("char-MLP train/val gap, dropout / no dropout", gap_ratio, "<=", 0.5),
            Check(
                "digits test accuracy, dropout minus none",
                acc["dropout"] - acc["plain"],
                ">=",
                0.01,
            ),
        ],
        note=f"p={cfg.p}. The char-MLP sees only {cfg.char_train_chars:,} characters and "
        "overfits; clean digits leave little to gain.",
    )
    c = ent["correct"]
    mc = Claim(
        key="dropout.mc",
        experiment="dropout",
        text="Monte Carlo dropout measures uncertainty: high entropy on wrong and unfamiliar "
        "inputs",
        checks=[
            Check("entropy wrong / correct", ent["wrong"] / c if c > 0 else math.nan, ">=", 3.0),
            Check("entropy OOD / correct", ent["ood"] / c if c > 0 else math.nan, ">=", 3.0),
            Check(
                "OOD AUROC, MC dropout minus dropout off",
                roc["mc_dropout"] - roc["dropout_off"],
                ">=",
                0.02,
            ),
        ],
        note=f"{cfg.mc_samples} samples; OOD inputs are 8x8 patches of scikit-learn's sample "
        "photos.",
    )
    return [overfit, mc]
