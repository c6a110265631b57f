"""What every experiment shares: its result record, the training loop, seed statistics."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from traintech.demo._data import take_batches
from traintech.demo._stats import seed_interval
from traintech.demo._verdict import Claim, Effect

Tick = Callable[[], None]


@dataclass
class ExperimentResult:
    """The outcome of one experiment.

    Attributes:
        name: ``init``, ``clip``, ``transformer``, ``norm`` or ``dropout``.
        title: a heading for the report.
        settings: the configuration that ran (JSON-ready).
        numbers: every measured number, aggregated over seeds and per seed (JSON-ready).
        claims: the claims with their checks and verdicts.
        plots: ``{file name: caption}`` of the figures written for this experiment.
        sources: ``{traintech name: defining module}`` of what the experiment imports.
        seconds: wall time of the experiment.
        cpu_seconds: CPU time of the experiment (close to the wall time on an idle machine).
    """

    name: str
    title: str
    settings: dict[str, Any]
    numbers: dict[str, Any]
    claims: list[Claim]
    plots: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float = 0.0


def mean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN when there are none, ``inf`` if any value is ``inf``."""
    if any(math.isinf(v) for v in values):
        return math.inf
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else math.nan


def minus(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Per-seed differences ``a[i] - b[i]`` (``ValueError`` when the lengths differ)."""
    return [x - y for x, y in zip(a, b, strict=True)]


def effect(what: str, per_seed: Sequence[float], op: str = ">", null: float = 0.0) -> Effect:
    """An :class:`Effect` from per-seed differences, with their 95% interval across seeds."""
    return Effect(what, seed_interval(per_seed), op, null)


def mlp(
    depth: int, width: int, act: type[nn.Module], d_in: int = 64, d_out: int = 10
) -> nn.Sequential:
    """``depth`` hidden Linear+activation layers of ``width`` units, then a Linear head."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else width, width), act()]
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Test accuracy of ``model`` in eval mode (restoring its mode); 0.1-ish for chance."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(x)
    model.train(was_training)
    if not torch.isfinite(logits).all():
        return float((y == 0).float().mean())  # a NaN net predicts class 0 under argmax
    return float((logits.argmax(-1) == y).float().mean())


def train_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    momentum: float = 0.9,
    tick: Tick | None = None,
) -> list[float]:
    """Train with SGD + cross-entropy for ``steps`` minibatches; return the loss per step.

    A run whose loss turns non-finite stops early: its parameters are no longer meaningful, and
    the remaining losses are recorded as NaN.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss()
    losses: list[float] = []
    model.train()
    for index in take_batches(len(y), batch_size, steps, generator):
        loss = loss_fn(model(x[index]), y[index])
        value = float(loss.detach())
        losses.append(value)
        if not math.isfinite(value):
            losses += [math.nan] * (steps - len(losses))
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if tick is not None:
        tick()
    return losses
