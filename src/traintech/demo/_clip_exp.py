"""Experiment: gradient clipping on a vanilla tanh RNN language model (CPython's docs).

Plain SGD at a learning rate of 2.0 makes the RNN's gradients explode. The same model and data
are trained with no clipping, clip-by-norm and clip-by-value, and with the two controls that rule
out "clipping only shrinks the step": no clipping at clip-by-norm's mean effective learning rate
(``lr * mean coef``, measured on the same seed), and no clipping at the best of a grid of lower
learning rates. Per step we record the loss, the pre-clipping gradient norm, the clip coefficient
and the cosine between the raw and the clipped gradient (norm clipping keeps the direction,
value clipping does not).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from traintech.clip import clip_grad_norm_, clip_grad_value_
from traintech.demo._common import ExperimentResult, Tick, effect, mean, minus
from traintech.demo._data import load_text
from traintech.demo._impl import implementation_sources
from traintech.demo._verdict import Check, Claim

MODES = ("none", "norm", "value", "control_eff", "control_lower")


def label(mode: str, cfg: ClipConfig) -> str:
    """Legend text of a clipping arm with its setting."""
    return {
        "none": f"no clipping (lr {cfg.lr!r})",
        "norm": f"clip_grad_norm_(max_norm={cfg.max_norm!r})",
        "value": f"clip_grad_value_(clip_value={cfg.clip_value!r})",
        "control_eff": "no clipping at lr x clip-by-norm's mean coef",
        "control_lower": "no clipping at the best lower lr of "
        + ", ".join(repr(lr) for lr in cfg.lower_lrs),
    }[mode]


@dataclass(frozen=True)
class ClipConfig:
    """Settings of the RNN clipping experiment."""

    hidden: int = 128
    seq_len: int = 50
    batch_size: int = 32
    lr: float = 2.0
    steps: int = 200
    max_norm: float = 1.0
    clip_value: float = 0.01
    lower_lrs: tuple[float, ...] = (0.2, 0.05)
    val_sequences: int = 64

    @classmethod
    def quick(cls) -> ClipConfig:
        """The ``--quick`` settings."""
        return cls(steps=100, lower_lrs=(0.05,), val_sequences=32)


class CharRNN(nn.Module):
    """Embedding, one vanilla tanh RNN layer, and a linear read-out over the characters."""

    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = nn.RNN(hidden, hidden, nonlinearity="tanh", batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids: Tensor) -> Tensor:
        """Logits ``(batch, seq, vocab)`` for the next character at each position."""
        out, _ = self.rnn(self.embed(ids))
        return self.head(out)


def _windows(ids: Tensor, starts: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
    offsets = torch.arange(seq_len + 1)
    chunk = ids[starts[:, None] + offsets]
    return chunk[:, :-1], chunk[:, 1:]


def _flat_grad(model: nn.Module) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def _clipper(mode: str, cfg: ClipConfig) -> Callable[[list[Tensor]], object] | None:
    if mode == "norm":
        return lambda params: clip_grad_norm_(params, cfg.max_norm)
    if mode == "value":
        return lambda params: clip_grad_value_(params, cfg.clip_value)
    return None


def train_rnn(mode: str, cfg: ClipConfig, seed: int, lr: float) -> dict[str, Any]:
    """Train the char RNN with one clipping mode at ``lr``; return its curves and numbers."""
    text = load_text()
    n_val = len(text.ids) // 10
    train_ids, val_ids = text.ids[:-n_val], text.ids[-n_val:]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = CharRNN(text.vocab_size, cfg.hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    clip = _clipper(mode, cfg)
    params: list[Tensor] = list(model.parameters())
    losses, norms, cosines, coefs = [], [], [], []
    for _ in range(cfg.steps):
        starts = torch.randint(
            0, len(train_ids) - cfg.seq_len - 1, (cfg.batch_size,), generator=gen
        )
        x, y = _windows(train_ids, starts, cfg.seq_len)
        loss = nn.functional.cross_entropy(model(x).reshape(-1, text.vocab_size), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        (loss * cfg.seq_len).backward()  # summed over time, averaged over the batch
        raw = _flat_grad(model)
        raw_norm = float(raw.norm())
        norms.append(raw_norm)
        losses.append(float(loss.detach()))
        if clip is not None:
            clip(params)
            clipped = _flat_grad(model)
            new_norm = float(clipped.norm())
            coefs.append(new_norm / raw_norm if raw_norm > 0 else 1.0)
            denom = raw_norm * new_norm
            cosines.append(float(raw @ clipped) / denom if denom > 0 else 1.0)
        if not all(torch.isfinite(p.grad).all() for p in params if p.grad is not None):
            optimizer.zero_grad(set_to_none=True)  # leave the weights finite; count as stalled
        optimizer.step()
    val_gen = torch.Generator().manual_seed(10_000)
    starts = torch.randint(0, n_val - cfg.seq_len - 1, (cfg.val_sequences,), generator=val_gen)
    x, y = _windows(val_ids, starts, cfg.seq_len)
    with torch.no_grad():
        val = float(
            nn.functional.cross_entropy(model(x).reshape(-1, text.vocab_size), y.reshape(-1))
        )
    return {
        "loss": losses,
        "grad_norm": norms,
        "lr": lr,
        "val_loss": val if math.isfinite(val) else math.inf,
        "max_grad_norm": max(norms),
        "mean_coef": mean(coefs) if coefs else 1.0,
        "clipped_fraction": sum(c < 1 - 1e-6 for c in coefs) / len(coefs) if coefs else 0.0,
        "mean_cosine": mean(cosines) if cosines else 1.0,
        "min_cosine": min(cosines) if cosines else 1.0,
    }


def run_clip(cfg: ClipConfig, seeds: list[int], tick: Tick) -> ExperimentResult:
    """Run every arm for each seed; return numbers and verdicts."""
    text = load_text()
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    lower_grid: dict[str, list[dict[str, Any]]] = {repr(lr): [] for lr in cfg.lower_lrs}
    for seed in seeds:
        for mode in ("none", "norm", "value"):
            runs[mode].append(train_rnn(mode, cfg, seed, cfg.lr))
            tick()
        eff_lr = cfg.lr * runs["norm"][-1]["mean_coef"]
        runs["control_eff"].append(train_rnn("none", cfg, seed, eff_lr))
        tick()
        lower = []
        for lr in cfg.lower_lrs:
            lower.append(train_rnn("none", cfg, seed, lr))
            lower_grid[repr(lr)].append({k: v for k, v in lower[-1].items() if k != "loss"})
            tick()
        runs["control_lower"].append(min(lower, key=lambda r: r["val_loss"]))
    keys = ("val_loss", "max_grad_norm", "mean_cosine", "min_cosine", "mean_coef", "lr")
    summary = {m: {k: mean([float(r[k]) for r in rs]) for k in keys} for m, rs in runs.items()}
    uniform = math.log(text.vocab_size)
    numbers = {
        "summary": summary,
        "uniform_guess_loss": uniform,
        "per_seed": runs,
        "lower_lr_grid": lower_grid,
        "text_source": text.source,
        "seeds": seeds,
    }
    return ExperimentResult(
        name="clip",
        title="Gradient clipping: a vanilla RNN language model at a learning rate that explodes",
        settings=asdict(cfg),
        numbers=numbers,
        claims=_claims(cfg, runs, uniform),
        sources=implementation_sources("clip"),
    )


def _per_seed(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in runs]


def _minus(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str) -> list[float]:
    return minus(_per_seed(a, key), _per_seed(b, key))


def _claims(cfg: ClipConfig, runs: dict[str, list[dict[str, Any]]], uniform: float) -> list[Claim]:
    none, norm, value = runs["none"], runs["norm"], runs["value"]
    eff, lower = runs["control_eff"], runs["control_lower"]
    norm_val = mean(_per_seed(norm, "val_loss"))
    coef = mean(_per_seed(norm, "mean_coef"))
    frac = mean(_per_seed(norm, "clipped_fraction"))
    vs_eff = mean(_per_seed(eff, "val_loss")) - norm_val
    setting = f"vanilla RNN, SGD lr {cfg.lr!r}, {cfg.steps} steps"
    explode = Claim(
        key="clip.explode",
        experiment="clip",
        text="Gradient clipping prevents exploding gradients in RNNs",
        compared=f"{label('norm', cfg)} vs no clipping at the same lr ({setting}); clipping "
        f"scaled {100 * frac:.3g}% of steps by {coef:.4g} on average: clip an RNN trained at "
        "a learning rate where its gradient norm spikes.",
        checks=[
            Check(
                "no-clip peak gradient norm, mean over seeds",
                mean(_per_seed(none, "max_grad_norm")),
                ">=",
                1e3,
            ),
            Check(
                "clip-by-norm val loss minus uniform guess (nats)", norm_val - uniform, "<=", -1.0
            ),
        ],
        effects=[
            effect(
                "val loss, no clipping minus clip-by-norm (nats)", _minus(none, norm, "val_loss")
            )
        ],
        note=f"Validation cross-entropy after {cfg.steps} SGD steps; a uniform guess scores "
        f"{uniform:.4g} nats.",
    )
    not_lr_cut = Claim(
        key="clip.not_lr_cut",
        experiment="clip",
        text="Clipping does more than shrink the step: it beats the unclipped run at the clipped "
        "run's mean effective learning rate",
        compared=f"{label('norm', cfg)} at lr {cfg.lr!r} vs no clipping at lr x mean coef "
        f"(about {cfg.lr * coef:.4g}); the control ends {vs_eff:+.4g} nats from the clipped run: "
        + (
            "clipping adds to a plain lr cut."
            if vs_eff > 0
            else "here clipping acts as a learning-rate cut; tuning the lr does the same."
        ),
        checks=[
            Check(
                "control (lr x mean coef) minus clip-by-norm val loss, mean (nats)",
                vs_eff,
                ">",
                0.0,
            )
        ],
        effects=[
            effect(
                "val loss, control at effective lr minus clip-by-norm (nats)",
                _minus(eff, norm, "val_loss"),
            )
        ],
        note=f"Clip-by-norm scaled {100 * frac:.3g}% of steps; a run clipped on every step is an "
        "lr cut with a normalized step, which this control isolates.",
    )
    vs_lower = mean(_per_seed(lower, "val_loss")) - norm_val
    tuned = Claim(
        key="clip.vs_tuned_lr",
        experiment="clip",
        text="Clipping at a high learning rate beats tuning the learning rate down",
        compared=f"{label('norm', cfg)} at lr {cfg.lr!r} vs {label('control_lower', cfg)}: the "
        f"tuned unclipped run ends {vs_lower:+.4g} nats from the clipped one: "
        + (
            "clipping is worth keeping even against a tuned lr."
            if vs_lower > 0
            else "a tuned lower lr does as well; clipping is a safety net, not a gain."
        ),
        checks=[Check("tuned-lr minus clip-by-norm val loss, mean (nats)", vs_lower, ">", 0.0)],
        effects=[
            effect(
                "val loss, tuned lower lr minus clip-by-norm (nats)",
                _minus(lower, norm, "val_loss"),
            )
        ],
        note="The lower lr is picked per seed by its validation loss, which favours the control.",
    )
    direction = Claim(
        key="clip.direction",
        experiment="clip",
        text="Clip-by-norm keeps the gradient's direction; clip-by-value changes it",
        compared=f"cosine between raw and clipped gradients, {label('norm', cfg)} vs "
        f"{label('value', cfg)}: prefer norm clipping when the update direction matters.",
        checks=[
            Check(
                "clip-by-norm min cosine(raw, clipped), worst seed",
                min(_per_seed(norm, "min_cosine")),
                ">=",
                0.9999,
            ),
            Check(
                "clip-by-value mean cosine(raw, clipped), mean over seeds",
                mean(_per_seed(value, "mean_cosine")),
                "<=",
                0.99,
            ),
        ],
        effects=[
            effect(
                "cosine, clip-by-norm min minus clip-by-value mean",
                [
                    a - b
                    for a, b in zip(
                        _per_seed(norm, "min_cosine"), _per_seed(value, "mean_cosine"), strict=True
                    )
                ],
            )
        ],
        note=f"clip_value {cfg.clip_value!r}, max_norm {cfg.max_norm!r}.",
    )
    return [explode, not_lr_cut, tuned, direction]
