"""Experiment: normalization in a small residual CNN on the digits.

A residual CNN (a 3x3 stem, a residual block of two 3x3 convolutions, 2x2 max pooling, a second
residual block, a linear head; 16 channels on the standardized 8x8 digits) with ``BatchNorm2d``,
``GroupNorm(4, 16)`` or no normalization after every convolution.
Two sweeps, each over every variant:

1. batch size at a fixed learning rate, for the same number of epochs (at least a minimum number
   of steps): BatchNorm's batch statistics and running averages, estimated from tiny batches,
   no longer match the test data;
2. learning rate on one grid at batch size 32: the highest rate at which each variant still
   trains (test accuracy at least ``trains_at``), per seed.

Test accuracy is measured in eval mode (BatchNorm uses its running statistics).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from traintech.demo._common import (
    ExperimentResult,
    Tick,
    accuracy,
    effect,
    mean,
    minus,
    train_classifier,
)
from traintech.demo._data import load_digits
from traintech.demo._impl import implementation_sources
from traintech.demo._verdict import Check, Claim
from traintech.norm import BatchNorm2d, GroupNorm

NORMS = ("none", "batch", "group")
LABELS = {"none": "no norm", "batch": "BatchNorm2d", "group": "GroupNorm(4 groups)"}


@dataclass(frozen=True)
class NormConfig:
    """Settings of the normalization experiment."""

    channels: int = 16
    groups: int = 4
    batch_sizes: tuple[int, ...] = (2, 32)
    epochs: float = 0.5
    min_steps: int = 120
    lr: float = 0.02
    lr_sweep: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)
    lr_batch_size: int = 32
    lr_epochs: float = 3.0
    trains_at: float = 0.8

    @classmethod
    def quick(cls) -> NormConfig:
        """The ``--quick`` settings."""
        return cls(epochs=0.25, min_steps=80, lr_sweep=(0.03, 0.3), lr_epochs=2.0)

    def steps_for(self, batch_size: int, n_train: int) -> int:
        """Steps of the batch-size sweep: ``epochs`` passes, at least ``min_steps``."""
        return max(self.min_steps, round(self.epochs * n_train / batch_size))


def _norm(kind: str, cfg: NormConfig) -> nn.Module:
    if kind == "batch":
        return BatchNorm2d(cfg.channels)
    if kind == "group":
        return GroupNorm(cfg.groups, cfg.channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"kind must be one of {NORMS}, got {kind!r}")


class ResBlock(nn.Module):
    """``relu(x + norm(conv(relu(norm(conv(x))))))``."""

    def __init__(self, kind: str, cfg: NormConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            _norm(kind, cfg),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            _norm(kind, cfg),
        )

    def forward(self, x: Tensor) -> Tensor:
        """The residual sum, then ReLU."""
        return torch.relu(x + self.body(x))


def res_cnn(kind: str, cfg: NormConfig) -> nn.Sequential:
    """Stem conv + norm + ReLU, residual block, 2x2 max pool, residual block, linear head."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, cfg.channels, 3, padding=1, bias=False),
        _norm(kind, cfg),
        nn.ReLU(),
        ResBlock(kind, cfg),
        nn.MaxPool2d(2),
        ResBlock(kind, cfg),
        nn.Flatten(),
        nn.Linear(cfg.channels * 16, 10),
    )


def _train_eval(kind: str, cfg: NormConfig, bs: int, lr: float, steps: int, seed: int) -> float:
    digits = load_digits()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = res_cnn(kind, cfg)
    x_train, x_test = digits.standardize(digits.x_train), digits.standardize(digits.x_test)
    train_classifier(
        model, x_train, digits.y_train, steps=steps, batch_size=bs, lr=lr, generator=gen
    )
    return accuracy(model, x_test, digits.y_test)


def max_trainable_lr(accs: dict[float, float], trains_at: float) -> float:
    """The highest learning rate whose accuracy reaches ``trains_at``; 0 when none does."""
    ok = [lr for lr, acc in accs.items() if acc >= trains_at]
    return max(ok) if ok else 0.0


def run_norm(cfg: NormConfig, seeds: list[int], tick: Tick) -> ExperimentResult:
    """Run both sweeps for every variant and seed; return numbers and verdicts."""
    n_train = len(load_digits().y_train)
    lr_steps = max(1, round(cfg.lr_epochs * n_train / cfg.lr_batch_size))
    by_batch: dict[str, dict[int, list[float]]] = {
        k: {bs: [] for bs in cfg.batch_sizes} for k in NORMS
    }
    by_lr: dict[str, dict[float, list[float]]] = {k: {lr: [] for lr in cfg.lr_sweep} for k in NORMS}
    for seed in seeds:
        for k in NORMS:
            for bs in cfg.batch_sizes:
                by_batch[k][bs].append(
                    _train_eval(k, cfg, bs, cfg.lr, cfg.steps_for(bs, n_train), seed)
                )
                tick()
            for lr in cfg.lr_sweep:
                by_lr[k][lr].append(_train_eval(k, cfg, cfg.lr_batch_size, lr, lr_steps, seed))
                tick()
    max_lr = {
        k: [
            max_trainable_lr({lr: by_lr[k][lr][i] for lr in cfg.lr_sweep}, cfg.trains_at)
            for i in range(len(seeds))
        ]
        for k in NORMS
    }
    numbers = {
        "test_accuracy_by_batch_size": {
            k: {str(bs): mean(v) for bs, v in d.items()} for k, d in by_batch.items()
        },
        "test_accuracy_by_lr": {
            k: {repr(lr): mean(v) for lr, v in d.items()} for k, d in by_lr.items()
        },
        "worst_seed_accuracy_by_lr": {
            k: {repr(lr): min(v) for lr, v in d.items()} for k, d in by_lr.items()
        },
        "max_trainable_lr_per_seed": max_lr,
        "per_seed": {
            "by_batch_size": {k: {str(bs): v for bs, v in d.items()} for k, d in by_batch.items()},
            "by_lr": {k: {repr(lr): v for lr, v in d.items()} for k, d in by_lr.items()},
        },
        "seeds": seeds,
    }
    return ExperimentResult(
        name="norm",
        title="Normalization in a residual CNN: batch size and learning rate",
        settings=asdict(cfg),
        numbers=numbers,
        claims=_claims(cfg, by_batch, max_lr),
        sources=implementation_sources("norm"),
    )


def _log2_ratio(a: float, b: float) -> float:
    """``log2(a / b)`` where 0 means "trains at no rate on the grid" (-inf, or NaN for 0/0)."""
    if a == 0 and b == 0:
        return 0.0
    if b == 0:
        return math.inf
    if a == 0:
        return -math.inf
    return math.log2(a / b)


def _claims(
    cfg: NormConfig, by_batch: dict[str, dict[int, list[float]]], max_lr: dict[str, list[float]]
) -> list[Claim]:
    small, large = min(cfg.batch_sizes), max(cfg.batch_sizes)
    gn_minus_bn = minus(by_batch["group"][small], by_batch["batch"][small])
    bn_drop = minus(by_batch["batch"][large], by_batch["batch"][small])
    small_batch = Claim(
        key="norm.small_batch",
        experiment="norm",
        text="GroupNorm is robust at small batch sizes, where BatchNorm degrades",
        compared=f"residual CNN with GroupNorm vs BatchNorm at batch {small} (same lr "
        f"{cfg.lr!r}, same epochs): GroupNorm minus BatchNorm = {mean(gn_minus_bn):+.4g} test "
        "accuracy: "
        + (
            f"use GroupNorm instead of BatchNorm when the per-device batch is as small as {small}."
            if mean(gn_minus_bn) >= 0.05
            else f"at batch {small} BatchNorm did not fall behind GroupNorm here."
        ),
        checks=[
            Check(
                f"GroupNorm minus BatchNorm test accuracy at batch {small}, mean",
                mean(gn_minus_bn),
                ">=",
                0.05,
            ),
            Check(
                f"BatchNorm accuracy, batch {large} minus batch {small}, mean",
                mean(bn_drop),
                ">=",
                0.05,
            ),
        ],
        effects=[
            effect(f"test accuracy, GroupNorm minus BatchNorm at batch {small}", gn_minus_bn),
            effect(f"BatchNorm test accuracy, batch {large} minus batch {small}", bn_drop),
        ],
        note=f"SGD (momentum 0.9, lr {cfg.lr!r}), {cfg.epochs!r} epoch(s) and at least "
        f"{cfg.min_steps} steps at every batch size.",
    )
    bn_vs_none = minus(by_batch["batch"][large], by_batch["none"][large])
    bn_cnn = Claim(
        key="norm.bn_cnn",
        experiment="norm",
        text="BatchNorm helps CNNs train",
        compared=f"residual CNN with BatchNorm vs none at batch {large}, lr {cfg.lr!r}, the same "
        f"steps: BatchNorm minus none = {mean(bn_vs_none):+.4g} test accuracy"
        + (": add BatchNorm to a CNN trained with large batches." if mean(bn_vs_none) > 0 else "."),
        checks=[
            Check(
                f"BatchNorm minus no-norm test accuracy at batch {large}, mean",
                mean(bn_vs_none),
                ">",
                0.0,
            )
        ],
        effects=[effect(f"test accuracy, BatchNorm minus no norm at batch {large}", bn_vs_none)],
        note="A short budget at a modest lr, where faster training shows as accuracy.",
    )
    grid = ", ".join(repr(lr) for lr in cfg.lr_sweep)
    checks, effects = [], []
    for k in ("batch", "group"):
        ratios = [_log2_ratio(a, b) for a, b in zip(max_lr[k], max_lr["none"], strict=True)]
        checks.append(
            Check(
                f"{LABELS[k]} highest trainable lr, worst seed, over no norm's best seed",
                _log2_ratio(min(max_lr[k]), max(max_lr["none"])),
                ">=",
                0.0,
            )
        )
        checks.append(
            Check(f"log2 {LABELS[k]} / no-norm highest trainable lr, mean", mean(ratios), ">", 0.0)
        )
        effects.append(effect(f"log2 of highest trainable lr, {LABELS[k]} over no norm", ratios))
    high_lr = Claim(
        key="norm.high_lr",
        experiment="norm",
        text="Normalization allows higher learning rates",
        compared=f"highest lr on the grid {grid} at which each variant reaches test accuracy "
        f"{cfg.trains_at!r} (batch {cfg.lr_batch_size}): BatchNorm "
        f"{[*max_lr['batch']]}, GroupNorm {[*max_lr['group']]}, no norm {[*max_lr['none']]} "
        "per seed: "
        + (
            "with normalization you can raise the lr."
            if all(c.passed for c in checks)
            else "on this grid normalization did not reliably raise the highest lr that trains."
        ),
        checks=checks,
        effects=effects,
        note=f"Every variant runs the same grid, {cfg.lr_epochs!r} epochs each, SGD momentum "
        "0.9; 0 means it trains at no rate on the grid.",
    )
    return [small_batch, bn_cnn, high_lr]
