"""Experiment 2, gradient clipping: a vanilla tanh RNN language model on CPython's docs.

Plain SGD at a learning rate of 2.0 makes the RNN's gradients explode. The same model and data
are trained with no clipping, clip-by-norm, clip-by-value and the adaptive clippers (ZClip and
AGC); for each we record the loss and the pre-clipping gradient norm
per step, the final validation cross-entropy, and the cosine between the raw and the clipped
gradient (norm clipping keeps the direction, value clipping does not).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from traintech.clip import AGC, ZClip, clip_grad_norm_, clip_grad_value_
from traintech.demo._common import ExperimentResult, Tick, mean
from traintech.demo._data import load_text
from traintech.demo._impl import implementation_sources
from traintech.demo._verdict import Check, Claim

MODES = ("none", "norm", "value", "zclip", "agc")
LABELS = {
    "none": "no clipping",
    "norm": "clip-by-norm",
    "value": "clip-by-value",
    "zclip": "ZClip",
    "agc": "AGC",
}


def label(mode: str, cfg: ClipConfig) -> str:
    """Legend text of a clipping mode with its setting."""
    settings = {
        "norm": f"clip_grad_norm_(max_norm={cfg.max_norm:g})",
        "value": f"clip_grad_value_(clip_value={cfg.clip_value:g})",
        "zclip": f"ZClip(max_grad_norm={cfg.zclip_max_grad_norm})",
        "agc": f"AGC(clip_factor={cfg.agc_clip_factor:g})",
    }
    return settings.get(mode, LABELS[mode])


@dataclass(frozen=True)
class ClipConfig:
    """Settings of the clipping experiment."""

    hidden: int = 128
    seq_len: int = 100
    batch_size: int = 32
    lr: float = 2.0
    steps: int = 300
    max_norm: float = 1.0
    clip_value: float = 0.01
    agc_clip_factor: float = 0.01
    zclip_max_grad_norm: float | None = None
    val_sequences: int = 64

    @classmethod
    def quick(cls) -> ClipConfig:
        """The ``--quick`` settings."""
        return cls(steps=80, val_sequences=32)


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
    if mode == "none":
        return None
    if mode == "norm":
        return lambda params: clip_grad_norm_(params, cfg.max_norm)
    if mode == "value":
        return lambda params: clip_grad_value_(params, cfg.clip_value)
    if mode == "zclip":
        zclip = ZClip(max_grad_norm=cfg.zclip_max_grad_norm)
        return lambda params: zclip(params)
    if mode == "agc":
        agc = AGC(clip_factor=cfg.agc_clip_factor)
        return lambda params: agc(params)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def train_rnn(mode: str, cfg: ClipConfig, seed: int, tick: Tick) -> dict[str, object]:
    """Train the char RNN with one clipping mode; return its curves and final numbers."""
    text = load_text()
    n_val = len(text.ids) // 10
    train_ids, val_ids = text.ids[:-n_val], text.ids[-n_val:]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = CharRNN(text.vocab_size, cfg.hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    clip = _clipper(mode, cfg)
    params: list[Tensor] = list(model.parameters())
    losses, norms, cosines = [], [], []
    for _ in range(cfg.steps):
        starts = torch.randint(
            0, len(train_ids) - cfg.seq_len - 1, (cfg.batch_size,), generator=gen
        )
        x, y = _windows(train_ids, starts, cfg.seq_len)
        loss = nn.functional.cross_entropy(model(x).reshape(-1, text.vocab_size), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        (loss * cfg.seq_len).backward()  # summed over time, averaged over the batch
        raw = _flat_grad(model)
        norms.append(float(raw.norm()))
        losses.append(float(loss.detach()))
        if clip is not None:
            clip(params)
            clipped = _flat_grad(model)
            denom = float(raw.norm() * clipped.norm())
            cosines.append(float(raw @ clipped) / denom if denom > 0 else 1.0)
        if not all(torch.isfinite(p.grad).all() for p in params if p.grad is not None):
            optimizer.zero_grad(set_to_none=True)  # leave the weights finite; count as stalled
        optimizer.step()
        tick()
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
        "cosine": cosines,
        "val_loss": val if math.isfinite(val) else math.inf,
        "max_grad_norm": max(norms),
        "mean_cosine": mean(cosines) if cosines else 1.0,
        "min_cosine": min(cosines) if cosines else 1.0,
    }


def run_clip(cfg: ClipConfig, seeds: list[int], tick: Tick) -> ExperimentResult:
    """Run every available clipping mode for each seed; return numbers and verdicts."""
    text = load_text()
    modes = MODES
    runs = {mode: [train_rnn(mode, cfg, seed, tick) for seed in seeds] for mode in modes}
    summary = {
        mode: {
            key: mean([float(r[key]) for r in rs])  # type: ignore[arg-type]
            for key in ("val_loss", "max_grad_norm", "mean_cosine", "min_cosine")
        }
        for mode, rs in runs.items()
    }
    uniform = math.log(text.vocab_size)
    numbers = {
        "summary": summary,
        "uniform_guess_loss": uniform,
        "per_seed": {
            mode: [{k: v for k, v in r.items() if k != "cosine"} for r in rs]
            for mode, rs in runs.items()
        },
        "text_source": text.source,
        "seeds": seeds,
    }
    return ExperimentResult(
        name="clip",
        title="Gradient clipping: a vanilla RNN language model at a learning rate that explodes",
        settings=asdict(cfg),
        numbers=numbers,
        claims=_claims(cfg, summary, uniform),
        sources=implementation_sources("clip"),
    )


def _claims(cfg: ClipConfig, s: dict[str, dict[str, float]], uniform: float) -> list[Claim]:
    none, norm = s["none"], s["norm"]
    explode = Claim(
        key="clip.explode",
        experiment="clip",
        text="Gradient clipping prevents exploding gradients in RNNs",
        checks=[
            Check("no-clip peak gradient norm", none["max_grad_norm"], ">=", 1e3),
            Check(
                "no-clip minus clip-by-norm val loss (nats)",
                none["val_loss"] - norm["val_loss"],
                ">=",
                1.0,
            ),
            Check(
                "clip-by-norm val loss minus uniform guess", norm["val_loss"] - uniform, "<=", -1.0
            ),
        ],
        note=f"Validation cross-entropy after {cfg.steps} SGD steps at lr {cfg.lr}; a uniform "
        f"guess scores {uniform:.2f} nats.",
    )
    value, norm_cos = s["value"], s["norm"]
    direction = Claim(
        key="clip.direction",
        experiment="clip",
        text="Clip-by-norm keeps the gradient's direction; clip-by-value changes it",
        checks=[
            Check("clip-by-norm min cosine(raw, clipped)", norm_cos["min_cosine"], ">=", 0.9999),
            Check("clip-by-value mean cosine(raw, clipped)", value["mean_cosine"], "<=", 0.99),
        ],
        note=f"clip_value {cfg.clip_value}, max_norm {cfg.max_norm}.",
    )
    adaptive_checks = [
        Check(f"{LABELS[m]} val loss minus uniform guess", s[m]["val_loss"] - uniform, "<=", -1.0)
        for m in ("zclip", "agc")
    ]
    adaptive = Claim(
        key="clip.adaptive",
        experiment="clip",
        text="Adaptive clipping (ZClip, AGC) also tames the explosion, with no norm bound to tune",
        checks=adaptive_checks,
        note=f"ZClip(max_grad_norm={cfg.zclip_max_grad_norm}) is purely adaptive: it clips "
        "against the EMA of past norms once its warm-up (25 steps by default) has collected "
        "them, so an explosion in the first steps passes unclipped. "
        f"AGC(clip_factor={cfg.agc_clip_factor}) bounds each unit's gradient relative to its "
        "weight norm from the first step.",
    )
    return [explode, direction, adaptive]
