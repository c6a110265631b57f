"""Experiment: a small pre-LN character Transformer language model on CPython's docs.

Two questions the guide answers with "Transformers" and "LLM training":

1. **Normalization** (LayerNorm: Transformers). The same pre-LN Transformer with ``LayerNorm``,
   ``RMSNorm`` or no normalization, trained with Adam at a learning rate where the normalized
   nets train; final validation loss and loss spikes.
2. **Clipping** (LLM training). The LayerNorm model with SGD (momentum 0.9) at a learning rate
   where unclipped training spikes and diverges: no clipping, ``clip_grad_norm_``,
   ``ZClip(max_grad_norm=1.0)`` (its default cap), ``ZClip(max_grad_norm=None)`` (purely
   adaptive) and ``AGC``; and the two controls that rule out "clipping is only a smaller step":
   no clipping at the clipped run's mean effective learning rate (``lr * mean coef``), and no
   clipping at the best of a grid of lower learning rates.

A loss spike is a step whose training loss is non-finite or exceeds the median of the previous
``spike_window`` losses by more than ``spike_nats``. A run whose loss turns non-finite stops; its
validation loss is ``inf`` and every remaining step counts as a spike.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from traintech.clip import AGC, ZClip, clip_grad_norm_
from traintech.demo._common import ExperimentResult, Tick, effect, mean
from traintech.demo._data import load_text
from traintech.demo._impl import implementation_sources
from traintech.demo._verdict import Check, Claim
from traintech.norm import LayerNorm, RMSNorm

NORMS = ("layer", "rms", "none")
NORM_LABELS = {"layer": "LayerNorm", "rms": "RMSNorm", "none": "no normalization"}
CLIPS = ("none", "norm", "zclip_cap", "zclip_adaptive", "agc")


@dataclass(frozen=True)
class TransformerConfig:
    """Settings of the Transformer experiment."""

    d_model: int = 64
    heads: int = 4
    layers: int = 2
    seq_len: int = 32
    batch_size: int = 16
    steps: int = 150
    norm_lr: float = 0.03
    clip_lr: float = 1.0
    lower_lrs: tuple[float, ...] = (0.3, 0.1)
    max_norm: float = 1.0
    zclip_cap: float = 1.0
    agc_clip_factor: float = 0.01
    spike_window: int = 20
    spike_nats: float = 0.5
    max_spikes: float = 2.0
    val_sequences: int = 64

    @classmethod
    def quick(cls) -> TransformerConfig:
        """The ``--quick`` settings."""
        return cls(steps=100, lower_lrs=(0.3,), val_sequences=32)


def clip_label(mode: str, cfg: TransformerConfig) -> str:
    """Legend text of a clipping arm with its setting."""
    return {
        "none": "no clipping",
        "norm": f"clip_grad_norm_(max_norm={cfg.max_norm!r})",
        "zclip_cap": f"ZClip(max_grad_norm={cfg.zclip_cap!r})",
        "zclip_adaptive": "ZClip(max_grad_norm=None)",
        "agc": f"AGC(clip_factor={cfg.agc_clip_factor!r})",
        "control_eff": "no clipping at lr x mean coef of clip_grad_norm_",
        "control_lower": "no clipping at the best lower lr",
    }[mode]


class Block(nn.Module):
    """Pre-LN block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, d: int, heads: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = norm(d), norm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: Tensor) -> Tensor:
        """Causal self-attention and MLP, each on the normalized residual stream."""
        b, t, d = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class CharTransformer(nn.Module):
    """Embedding + learned positions, pre-LN blocks, a final norm and a linear read-out."""

    def __init__(self, vocab: int, cfg: TransformerConfig, norm: str) -> None:
        super().__init__()
        make: Callable[[int], nn.Module]
        if norm == "layer":
            make = LayerNorm
        elif norm == "rms":
            make = RMSNorm
        elif norm == "none":
            make = lambda d: nn.Identity()  # noqa: E731
        else:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.embed = nn.Embedding(vocab, cfg.d_model)
        self.pos = nn.Parameter(torch.randn(cfg.seq_len, cfg.d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.heads, make) for _ in range(cfg.layers))
        self.norm = make(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, vocab)

    def forward(self, ids: Tensor) -> Tensor:
        """Logits ``(batch, seq, vocab)`` of the next character at each position."""
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def count_spikes(losses: list[float], steps: int, window: int, nats: float) -> int:
    """Steps whose loss is non-finite, missing (run stopped) or above the recent median + nats."""
    spikes = steps - len(losses)
    for i, value in enumerate(losses):
        if not math.isfinite(value):
            spikes += 1
        elif i >= window and value > statistics.median(losses[i - window : i]) + nats:
            spikes += 1
    return spikes


def _clipper(mode: str, cfg: TransformerConfig) -> Callable[[list[Tensor]], object] | None:
    if mode == "norm":
        return lambda params: clip_grad_norm_(params, cfg.max_norm)
    if mode == "zclip_cap":
        zclip = ZClip(max_grad_norm=cfg.zclip_cap)
        return lambda params: zclip(params)
    if mode == "zclip_adaptive":
        zclip_a = ZClip(max_grad_norm=None)
        return lambda params: zclip_a(params)
    if mode == "agc":
        agc = AGC(clip_factor=cfg.agc_clip_factor)
        return lambda params: agc(params)
    return None


def _grad_norm(params: list[Tensor]) -> float:
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params if p.grad is not None))


def train_lm(
    cfg: TransformerConfig, norm: str, optimizer: str, lr: float, clip: str, seed: int
) -> dict[str, Any]:
    """Train one model; return its loss curve, spikes, clip coefficients and validation loss."""
    text = load_text()
    n_val = len(text.ids) // 10
    train_ids, val_ids = text.ids[:-n_val], text.ids[-n_val:]
    offsets = torch.arange(cfg.seq_len + 1)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = CharTransformer(text.vocab_size, cfg, norm)
    params: list[Tensor] = list(model.parameters())
    opt: torch.optim.Optimizer = (
        torch.optim.Adam(params, lr=lr)
        if optimizer == "adam"
        else torch.optim.SGD(params, lr=lr, momentum=0.9)
    )
    clipper = _clipper(clip, cfg)
    losses: list[float] = []
    coefs: list[float] = []
    model.train()
    for _ in range(cfg.steps):
        starts = torch.randint(
            0, len(train_ids) - cfg.seq_len - 1, (cfg.batch_size,), generator=gen
        )
        chunk = train_ids[starts[:, None] + offsets]
        logits = model(chunk[:, :-1])
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, text.vocab_size), chunk[:, 1:].reshape(-1)
        )
        value = float(loss.detach())
        losses.append(value)
        if not math.isfinite(value):
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clipper is not None:
            raw = _grad_norm(params)
            clipper(params)
            coefs.append(_grad_norm(params) / raw if raw > 0 else 1.0)
        opt.step()
    val = math.inf
    if all(math.isfinite(v) for v in losses):
        val_gen = torch.Generator().manual_seed(10_000)
        starts = torch.randint(0, n_val - cfg.seq_len - 1, (cfg.val_sequences,), generator=val_gen)
        chunk = val_ids[starts[:, None] + offsets]
        model.eval()
        with torch.no_grad():
            logits = model(chunk[:, :-1])
            val = float(
                nn.functional.cross_entropy(
                    logits.reshape(-1, text.vocab_size), chunk[:, 1:].reshape(-1)
                )
            )
        val = val if math.isfinite(val) else math.inf
    return {
        "loss": losses,
        "val_loss": val,
        "spikes": count_spikes(losses, cfg.steps, cfg.spike_window, cfg.spike_nats),
        "mean_coef": mean(coefs) if coefs else 1.0,
        "clipped_fraction": (sum(c < 1 - 1e-6 for c in coefs) / len(coefs)) if coefs else 0.0,
        "lr": lr,
    }


def run_transformer(cfg: TransformerConfig, seeds: list[int], tick: Tick) -> ExperimentResult:
    """Run the normalization and clipping arms for each seed; return numbers and verdicts."""
    norm_runs: dict[str, list[dict[str, Any]]] = {k: [] for k in NORMS}
    clip_runs: dict[str, list[dict[str, Any]]] = {
        k: [] for k in (*CLIPS, "control_eff", "control_lower")
    }
    lower_runs: dict[str, list[dict[str, Any]]] = {repr(lr): [] for lr in cfg.lower_lrs}
    for seed in seeds:
        for norm in NORMS:
            norm_runs[norm].append(train_lm(cfg, norm, "adam", cfg.norm_lr, "none", seed))
            tick()
        for mode in CLIPS:
            clip_runs[mode].append(train_lm(cfg, "layer", "sgd", cfg.clip_lr, mode, seed))
            tick()
        eff_lr = cfg.clip_lr * clip_runs["norm"][-1]["mean_coef"]
        clip_runs["control_eff"].append(train_lm(cfg, "layer", "sgd", eff_lr, "none", seed))
        tick()
        lower = [train_lm(cfg, "layer", "sgd", lr, "none", seed) for lr in cfg.lower_lrs]
        for lr, run in zip(cfg.lower_lrs, lower, strict=True):
            lower_runs[repr(lr)].append(run)
            tick()
        clip_runs["control_lower"].append(min(lower, key=lambda r: r["val_loss"]))

    def summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
        keys = ("val_loss", "spikes", "mean_coef", "clipped_fraction", "lr")
        return {m: {k: mean([float(r[k]) for r in rs]) for k in keys} for m, rs in runs.items()}

    numbers = {
        "norm_summary": summary(norm_runs),
        "clip_summary": summary(clip_runs),
        "per_seed": {"norm": norm_runs, "clip": clip_runs, "lower_lr_grid": lower_runs},
        "uniform_guess_loss": math.log(load_text().vocab_size),
        "seeds": seeds,
    }
    return ExperimentResult(
        name="transformer",
        title="Transformer LM: normalization and clipping where the guide says they matter",
        settings=asdict(cfg),
        numbers=numbers,
        claims=_norm_claims(cfg, norm_runs) + _clip_claims(cfg, clip_runs),
        sources=implementation_sources("transformer"),
    )


def _vals(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in runs]


def _diff(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str) -> list[float]:
    """Per seed ``a[key] - b[key]``: ``inf`` when only ``a`` diverged, NaN when both did."""
    return [
        x - y if math.isfinite(x) or x != y else math.nan
        for x, y in zip(_vals(a, key), _vals(b, key), strict=True)
    ]


def _norm_claims(cfg: TransformerConfig, runs: dict[str, list[dict[str, Any]]]) -> list[Claim]:
    claims = []
    for norm in ("layer", "rms"):
        gain = _diff(runs["none"], runs[norm], "val_loss")
        label = NORM_LABELS[norm]
        claims.append(
            Claim(
                key=f"transformer.{norm}_norm",
                experiment="transformer",
                text=f"{label} stabilizes Transformer training",
                compared=f"pre-LN Transformer with {label} vs with no normalization, Adam at "
                f"lr {cfg.norm_lr!r}: validation loss, no norm minus {label} = "
                f"{mean(gain):.4g} nats on average; keep the norm layers in a Transformer.",
                checks=[
                    Check(f"val loss, no norm minus {label}, mean (nats)", mean(gain), ">", 0.0),
                    Check(
                        f"{label} loss-spike steps, mean over seeds",
                        mean(_vals(runs[norm], "spikes")),
                        "<=",
                        cfg.max_spikes,
                    ),
                ],
                effects=[effect(f"val loss, no norm minus {label} (nats)", gain)],
                note=f"{cfg.layers} layers, d_model {cfg.d_model}, {cfg.heads} heads, context "
                f"{cfg.seq_len}, batch {cfg.batch_size}, {cfg.steps} Adam steps at lr "
                f"{cfg.norm_lr!r}.",
            )
        )
    return claims


def _advice(lower_gap: float) -> str:
    """What to do, from the clipped run's val loss minus the tuned-lower-lr control's."""
    if not math.isfinite(lower_gap):
        return "it diverged like the unclipped run; do not rely on it at this lr."
    if lower_gap <= 0:
        return "clipping lets you train at the high lr at least as well as a tuned lower lr."
    return (
        "it rescues the high lr, but a tuned lower lr without clipping ends better; clipping "
        "is a safety net here, not a gain."
    )


def _clip_claims(cfg: TransformerConfig, runs: dict[str, list[dict[str, Any]]]) -> list[Claim]:
    none = runs["none"]
    setting = f"SGD momentum 0.9 at lr {cfg.clip_lr!r}, LayerNorm model, {cfg.steps} steps"
    claims = [
        Claim(
            key="transformer.spikes",
            experiment="transformer",
            text="Without clipping, training at a high learning rate spikes",
            compared=f"no clipping, {setting}: {mean(_vals(none, 'spikes')):.4g} spike steps "
            "on average; this is the setting the clipping claims below are tested in.",
            checks=[
                Check(
                    "unclipped loss-spike steps, mean over seeds",
                    mean(_vals(none, "spikes")),
                    ">",
                    cfg.max_spikes,
                )
            ],
            effects=[
                effect("unclipped loss-spike steps", _vals(none, "spikes"), ">", cfg.max_spikes)
            ],
            note=f"A spike is a non-finite loss or one more than {cfg.spike_nats!r} nats above "
            f"the median of the previous {cfg.spike_window} steps.",
        )
    ]
    controls = {
        "control_eff": "the unclipped run at the clipped run's mean effective lr",
        "control_lower": "the unclipped run at the best lower lr of "
        + ", ".join(repr(lr) for lr in cfg.lower_lrs),
    }
    for mode in ("norm", "zclip_cap", "zclip_adaptive", "agc"):
        runs_m = runs[mode]
        label = clip_label(mode, cfg)
        gain = _diff(none, runs_m, "val_loss")
        vs_eff = _diff(runs["control_eff"], runs_m, "val_loss")
        checks = [
            Check(f"val loss, no clipping minus {label}, mean (nats)", mean(gain), ">", 0.0),
            Check(
                f"{label} loss-spike steps, mean over seeds",
                mean(_vals(runs_m, "spikes")),
                "<=",
                cfg.max_spikes,
            ),
        ]
        effects = [effect(f"val loss, no clipping minus {label} (nats)", gain)]
        if mode == "norm":
            checks.append(
                Check(
                    f"val loss, {controls['control_eff']} minus {label}, mean (nats)",
                    mean(vs_eff),
                    ">",
                    0.0,
                )
            )
            effects.append(
                effect(f"val loss, {controls['control_eff']} minus {label} (nats)", vs_eff)
            )
        lower_gap = mean(_vals(runs_m, "val_loss")) - mean(_vals(runs["control_lower"], "val_loss"))
        claims.append(
            Claim(
                key=f"transformer.clip_{mode}",
                experiment="transformer",
                text=f"{label} prevents loss spikes at a learning rate where unclipped "
                "training spikes",
                compared=f"{label} vs no clipping, {setting} (mean clip coefficient "
                f"{mean(_vals(runs_m, 'mean_coef')):.4g}, clipping "
                f"{100 * mean(_vals(runs_m, 'clipped_fraction')):.3g}% of steps); against "
                f"{controls['control_lower']} it ends {lower_gap:+.4g} nats: " + _advice(lower_gap),
                checks=checks,
                effects=effects,
                note="The control at lr x mean coef shows whether clipping acts only as a smaller "
                "step; the lower-lr control shows whether simply tuning the lr does as well.",
            )
        )
    return claims
