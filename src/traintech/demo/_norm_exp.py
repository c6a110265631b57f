"""Experiment 3, normalization: small batches and high learning rates, on digits.

A small CNN whose last hidden layer (64 units) is followed by no norm, ``BatchNorm1d``,
``GroupNorm(8, 64)`` or ``LayerNorm(64)``. Two sweeps:

1. batch size (2 to 32) at a fixed learning rate, for the same epochs (at least a minimum
   number of steps): BatchNorm's running
   statistics, estimated from batches of two, no longer match the test data;
2. learning rate (0.01 to 1.0) at batch size 32: which nets still train at a high rate.

Test accuracy is measured in eval mode (BatchNorm uses its running statistics).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from traintech.demo._common import ExperimentResult, Tick, accuracy, mean, train_classifier
from traintech.demo._data import load_digits
from traintech.demo._impl import implementation_sources
from traintech.demo._verdict import Check, Claim
from traintech.norm import BatchNorm1d, GroupNorm, LayerNorm

NORMS = ("none", "batch", "group", "layer")
LABELS = {
    "none": "no norm",
    "batch": "BatchNorm1d",
    "group": "GroupNorm(8 groups)",
    "layer": "LayerNorm",
}


@dataclass(frozen=True)
class NormConfig:
    """Settings of the normalization experiment."""

    hidden: int = 64
    groups: int = 8
    batch_sizes: tuple[int, ...] = (2, 4, 8, 16, 32)
    epochs: float = 1.0
    min_steps: int = 200
    lr: float = 0.01
    lr_sweep: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)
    lr_batch_size: int = 32
    lr_epochs: float = 3.0
    high_lr: float = 0.3

    @classmethod
    def quick(cls) -> NormConfig:
        """The ``--quick`` settings."""
        return cls(
            batch_sizes=(2, 8, 32),
            epochs=0.75,
            min_steps=120,
            lr_sweep=(0.03, 0.3),
            lr_epochs=2.0,
        )

    def steps_for(self, batch_size: int, n_train: int) -> int:
        """Steps of the batch-size sweep: ``epochs`` passes, at least ``min_steps``."""
        return max(self.min_steps, round(self.epochs * n_train / batch_size))


def _norm_layer(kind: str, cfg: NormConfig) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return BatchNorm1d(cfg.hidden)
    if kind == "group":
        return GroupNorm(cfg.groups, cfg.hidden)
    if kind == "layer":
        return LayerNorm(cfg.hidden)
    raise ValueError(f"kind must be one of {NORMS}, got {kind!r}")


def small_cnn(kind: str, cfg: NormConfig) -> nn.Sequential:
    """Two 3x3 convs and a pool, then Linear -> norm -> ReLU -> Linear on 8x8 digits."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, cfg.hidden),
        _norm_layer(kind, cfg),
        nn.ReLU(),
        nn.Linear(cfg.hidden, 10),
    )


def _train_eval(
    kind: str, cfg: NormConfig, bs: int, lr: float, steps: int, seed: int, tick: Tick
) -> float:
    digits = load_digits()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = small_cnn(kind, cfg)
    train_classifier(
        model,
        digits.x_train,
        digits.y_train,
        steps=steps,
        batch_size=bs,
        lr=lr,
        generator=gen,
        tick=tick,
    )
    return accuracy(model, digits.x_test, digits.y_test)


def run_norm(cfg: NormConfig, seeds: list[int], tick: Tick) -> ExperimentResult:
    """Run both sweeps for each seed; return numbers and verdicts."""
    n_train = len(load_digits().y_train)
    lr_steps = max(1, round(cfg.lr_epochs * n_train / cfg.lr_batch_size))
    by_batch = {
        k: {
            bs: [
                _train_eval(k, cfg, bs, cfg.lr, cfg.steps_for(bs, n_train), s, tick) for s in seeds
            ]
            for bs in cfg.batch_sizes
        }
        for k in NORMS
    }
    by_lr = {
        k: {
            lr: [_train_eval(k, cfg, cfg.lr_batch_size, lr, lr_steps, s, tick) for s in seeds]
            for lr in cfg.lr_sweep
        }
        for k in NORMS
    }
    acc_batch = {k: {str(bs): mean(v) for bs, v in d.items()} for k, d in by_batch.items()}
    acc_lr = {k: {str(lr): mean(v) for lr, v in d.items()} for k, d in by_lr.items()}
    numbers = {
        "test_accuracy_by_batch_size": acc_batch,
        "test_accuracy_by_lr": acc_lr,
        "per_seed": {
            "by_batch_size": {k: {str(bs): v for bs, v in d.items()} for k, d in by_batch.items()},
            "by_lr": {k: {str(lr): v for lr, v in d.items()} for k, d in by_lr.items()},
        },
        "seeds": seeds,
    }
    return ExperimentResult(
        name="norm",
        title="Normalization: batch size and learning rate",
        settings=asdict(cfg),
        numbers=numbers,
        claims=_claims(cfg, acc_batch, by_lr),
        sources=implementation_sources("norm"),
    )


def _claims(
    cfg: NormConfig,
    acc_batch: dict[str, dict[str, float]],
    by_lr: dict[str, dict[float, list[float]]],
) -> list[Claim]:
    small = str(min(cfg.batch_sizes))
    bn, gn, ln = acc_batch["batch"][small], acc_batch["group"][small], acc_batch["layer"][small]
    small_batch = Claim(
        key="norm.small_batch",
        experiment="norm",
        text="GroupNorm and LayerNorm are robust at small batch sizes, where BatchNorm fails",
        checks=[
            Check(f"GroupNorm minus BatchNorm test accuracy at batch {small}", gn - bn, ">=", 0.15),
            Check(f"LayerNorm minus BatchNorm test accuracy at batch {small}", ln - bn, ">=", 0.15),
            Check(f"GroupNorm test accuracy at batch {small}", gn, ">=", 0.9),
            Check(f"LayerNorm test accuracy at batch {small}", ln, ">=", 0.9),
        ],
        note=f"SGD (momentum 0.9, lr {cfg.lr}), {cfg.epochs:g} epoch(s) and at least "
        f"{cfg.min_steps} steps at every batch size.",
    )
    hi = cfg.high_lr
    worst = {k: min(by_lr[k][hi]) for k in ("batch", "group", "layer")}
    best_none = max(by_lr["none"][hi])
    high_lr = Claim(
        key="norm.high_lr",
        experiment="norm",
        text="Normalization allows higher learning rates",
        checks=[
            Check(f"no-norm test accuracy at lr {hi}, best seed (must fail)", best_none, "<", 0.3),
            Check(f"BatchNorm test accuracy at lr {hi}, worst seed", worst["batch"], ">", 0.8),
            Check(f"GroupNorm test accuracy at lr {hi}, worst seed", worst["group"], ">", 0.8),
            Check(f"LayerNorm test accuracy at lr {hi}, worst seed", worst["layer"], ">", 0.8),
        ],
        note=f"Batch size {cfg.lr_batch_size}, {cfg.lr_epochs:g} epochs, SGD momentum 0.9. "
        "'Allows' means on every seed: the worst seed must train, and no seed of the "
        "no-norm net may.",
    )
    return [small_batch, high_lr]
