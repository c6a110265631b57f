"""A labelled corpus of small real training runs, each a pathology (or none) the Monitor must name.

Every builder trains a small model on CPU for a few seconds at most, on data drawn from a seeded
generator, with a :class:`~traintech.monitor.Monitor` at its default sampling except where the
run is too short for it, and returns the monitor. ``CORPUS`` maps each run's name to its builder,
the rule it must produce (None: healthy, no finding at all) and the rules that would be advice
in the wrong direction for it.

Run ``python tests/monitor/_corpus.py`` (with ``PYTHONPATH=src``) to print the confusion table
that ``docs/monitor.md`` shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _monitor_models import mlp
from torch import Tensor, nn

from traintech.clip import GuardedStep, NormClip
from traintech.demo._clip_exp import CharRNN  # the demo's model: embedding, tanh RNN, read-out
from traintech.monitor import Monitor

#: Rules that would tell a diverging run the opposite of what it needs.
WRONG_FOR_DIVERGENCE = frozenset({"vanishing_gradients", "update_ratio_low"})


def _gen(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _regression(n: int, d: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    x = torch.randn(n, d, generator=gen)
    w = torch.randn(d, 1, generator=gen) / math.sqrt(d)
    return x, torch.tanh(x @ w) + 0.05 * torch.randn(n, 1, generator=gen)


def _mlp_case(
    seed: int, n: int, widths: tuple[int, ...], act: type[nn.Module] = nn.ReLU
) -> tuple[torch.Generator, Tensor, Tensor, nn.Sequential]:
    """``(gen, x, y, model)``: seeded RNGs, ``n`` regression samples of 8 features, an MLP."""
    gen = _gen(seed)
    x, y = _regression(n, 8, gen)
    return gen, x, y, mlp(widths, act=act)


def _fit(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    mon: Monitor,
    x: Tensor,
    y: Tensor,
    steps: int,
    *,
    batch: int = 32,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    guard: GuardedStep | None = None,
    tamper: Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
) -> Monitor:
    loss_fn = loss_fn or nn.functional.mse_loss
    n = x.shape[0]
    for t in range(steps):
        i = (t * batch) % (n - batch + 1)
        xb, yb = x[i : i + batch], y[i : i + batch]
        if tamper is not None:
            xb, yb = tamper(t, xb, yb)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        if guard is not None:
            mon.step(loss=loss, clip=guard.step())
        else:
            opt.step()
            mon.step(loss=loss)
    return mon


# ------------------------------------------------------------------------------ pathologies
def _text(gen: torch.Generator, n: int, vocab: int) -> Tensor:
    """A token stream with structure to learn: noisy repeats of a few random words."""
    words = [torch.randint(0, vocab, (int(k),), generator=gen) for k in range(3, 9)]
    pieces, total = [], 0
    while total < n:
        w = words[int(torch.randint(0, len(words), (1,), generator=gen))]
        pieces.append(w)
        total += len(w)
    return torch.cat(pieces)[:n]


def _fit_lm(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    ids: Tensor,
    vocab: int,
    seq: int,
    steps: int,
    gen: torch.Generator,
    *,
    batch: int = 16,
    summed: bool = False,
) -> Monitor:
    """Next-token training on random windows of ``ids`` under a fresh ``Monitor(model, opt)``.

    The loss is the mean cross-entropy, times ``seq`` (summed over time steps) if ``summed``.
    """
    mon = Monitor(model, opt)
    offsets = torch.arange(seq + 1)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=gen)
        chunk = ids[starts[:, None] + offsets]
        x, y = chunk[:, :-1], chunk[:, 1:]
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
        if summed:
            loss = loss * seq
        loss.backward()
        opt.step()
        mon.step(loss=loss)
    return mon


def _lm_case(
    seed: int,
    steps: int,
    seq: int,
    make_model: Callable[[int], nn.Module],
    make_opt: Callable[[Any], torch.optim.Optimizer],
    *,
    summed: bool = False,
) -> Monitor:
    """A run of :func:`_fit_lm` on a 20 000-token stream over 32 symbols drawn from ``seed``."""
    gen = _gen(seed)
    vocab = 32
    ids = _text(gen, 20_000, vocab)
    model = make_model(vocab)
    return _fit_lm(model, make_opt(model.parameters()), ids, vocab, seq, steps, gen, summed=summed)


def exploding_rnn(seed: int = 0, steps: int = 40) -> Monitor:
    """The demo's exploding RNN: SGD at lr 2.0 on a loss summed over 50 time steps."""
    return _lm_case(
        seed, steps, 50, lambda v: CharRNN(v, 64), lambda p: torch.optim.SGD(p, lr=2.0),
        summed=True,
    )


def demo_exploding_rnn(seed: int = 0, steps: int = 8) -> Monitor:
    """The issue's own report: the demo's char RNN and text, at the demo's lr 2.0, no clipping.

    Same model, data, batch and summed loss as ``traintech demo``'s clipping experiment
    (``traintech.demo._clip_exp``), cut to ``steps`` steps.
    """
    from traintech.demo._clip_exp import ClipConfig
    from traintech.demo._data import load_text

    cfg = ClipConfig()
    text = load_text()
    gen = _gen(seed)
    model = CharRNN(text.vocab_size, cfg.hidden)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    return _fit_lm(
        model, opt, text.ids, text.vocab_size, cfg.seq_len, steps, gen,
        batch=cfg.batch_size, summed=True,
    )


def exploding_mlp(seed: int = 0, steps: int = 30) -> Monitor:
    """A linear-ish MLP with SGD far above its stable step size: the loss explodes at once."""
    gen = _gen(seed)
    x, y = _regression(1024, 8, gen)
    x = 3.0 * x
    model = nn.Sequential(nn.Linear(8, 32), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    return _fit(model, opt, Monitor(model, opt), x, y, steps)


def nan_data(seed: int = 0, steps: int = 40) -> Monitor:
    """A healthy MLP fed one batch with a NaN feature at step 25."""
    _, x, y, model = _mlp_case(seed, 1024, (8, 32, 32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def tamper(t: int, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        if t == 25:
            xb = xb.clone()
            xb[3, 2] = math.nan
        return xb, yb

    guard = GuardedStep(opt, None, warn_every=None)  # the skip keeps the weights finite
    return _fit(model, opt, Monitor(model, opt), x, y, steps, tamper=tamper, guard=guard)


def vanishing(seed: int = 0, steps: int = 30) -> Monitor:
    """A 10-layer sigmoid MLP with a small init: the first layers get almost no gradient."""
    gen, x, y, model = _mlp_case(seed, 1024, (8,) + (32,) * 10 + (1,), act=nn.Sigmoid)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.05, generator=gen)
                m.bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return _fit(model, opt, Monitor(model, opt), x, y, steps)


def dead_relu(seed: int = 0, steps: int = 30) -> Monitor:
    """A ReLU MLP whose hidden biases start at -5: most units never fire."""
    _, x, y, model = _mlp_case(seed, 1024, (8, 64, 64, 1))
    with torch.no_grad():
        model[0].bias.fill_(-5.0)
        model[2].bias.fill_(-5.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return _fit(model, opt, Monitor(model, opt, activation_every=5), x, y, steps)


def loss_spike(seed: int = 0, steps: int = 80) -> Monitor:
    """A healthy MLP hit by one batch whose targets are 30x too large, at step 50."""
    _, x, y, model = _mlp_case(seed, 2048, (8, 32, 32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def tamper(t: int, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        return (xb, 30.0 * yb) if t == 50 else (xb, yb)

    return _fit(model, opt, Monitor(model, opt), x, y, steps, tamper=tamper)


def clip_saturated(seed: int = 0, steps: int = 40) -> Monitor:
    """A healthy MLP behind ``NormClip(1e-3)``: every step's gradient is scaled down."""
    _, x, y, model = _mlp_case(seed, 1024, (8, 32, 32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = GuardedStep(opt, NormClip(1e-3))
    return _fit(model, opt, Monitor(model, opt), x, y, steps, guard=guard)


def lr_too_low(seed: int = 0, steps: int = 40) -> Monitor:
    """Adam at lr 1e-8: the weights barely move."""
    _, x, y, model = _mlp_case(seed, 1024, (8, 32, 32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-8)
    return _fit(model, opt, Monitor(model, opt), x, y, steps)


# ------------------------------------------------------------------------------ healthy runs
def healthy_mlp(seed: int = 0, steps: int = 100) -> Monitor:
    """A ReLU MLP on a regression, Adam at 1e-3."""
    _, x, y, model = _mlp_case(seed, 2048, (8, 64, 64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return _fit(model, opt, Monitor(model, opt, activation_every=20), x, y, steps)


def healthy_sgd_tanh(seed: int = 0, steps: int = 100) -> Monitor:
    """A tanh MLP with SGD and momentum at a moderate learning rate."""
    _, x, y, model = _mlp_case(seed, 2048, (8, 64, 64, 1), act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return _fit(model, opt, Monitor(model, opt), x, y, steps)


def healthy_cnn(seed: int = 0, steps: int = 60) -> Monitor:
    """A two-conv CNN classifying 12x12 images of oriented bars, Adam at 1e-3."""
    gen = _gen(seed)
    n = 1024
    labels = torch.randint(0, 2, (n,), generator=gen)
    images = 0.3 * torch.randn(n, 1, 12, 12, generator=gen)
    images[labels == 0, 0, 6, :] += 1.0
    images[labels == 1, 0, :, 6] += 1.0
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 2),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mon = Monitor(model, opt, activation_every=20)
    return _fit(model, opt, mon, images, labels, steps, loss_fn=nn.functional.cross_entropy)


def healthy_rnn(seed: int = 0, steps: int = 60) -> Monitor:
    """The same char RNN as the exploding run, with Adam at 3e-3 and a mean loss."""
    return _lm_case(
        seed, steps, 30, lambda v: CharRNN(v, 64), lambda p: torch.optim.Adam(p, lr=3e-3)
    )


class TinyTransformer(nn.Module):
    """Token embedding, one pre-norm Transformer encoder layer and a read-out."""

    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.block = nn.TransformerEncoderLayer(
            dim, 4, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.block(self.embed(ids)))


def healthy_transformer(seed: int = 0, steps: int = 60) -> Monitor:
    """A one-layer Transformer learning to copy a shifted token stream, AdamW at 1e-3."""
    return _lm_case(
        seed, steps, 16, lambda v: TinyTransformer(v, 32), lambda p: torch.optim.AdamW(p, lr=1e-3)
    )


@dataclass(frozen=True)
class Case:
    """One labelled run: its builder, the rule it must get, the rules it must never get."""

    build: Callable[[], Monitor]
    expected: str | None
    forbidden: frozenset[str] = frozenset()


CORPUS: dict[str, Case] = {
    "exploding_rnn": Case(exploding_rnn, "exploding_gradients", WRONG_FOR_DIVERGENCE),
    "demo_exploding_rnn": Case(demo_exploding_rnn, "exploding_gradients", WRONG_FOR_DIVERGENCE),
    "exploding_mlp": Case(exploding_mlp, "exploding_gradients", WRONG_FOR_DIVERGENCE),
    "nan_data": Case(nan_data, "nonfinite", frozenset({"update_ratio_low"})),
    "vanishing": Case(vanishing, "vanishing_gradients", frozenset({"exploding_gradients"})),
    "dead_relu": Case(dead_relu, "dead_units", frozenset({"exploding_gradients"})),
    "loss_spike": Case(loss_spike, "spikes", WRONG_FOR_DIVERGENCE),
    "clip_saturated": Case(clip_saturated, "clipping_saturated", frozenset()),
    "lr_too_low": Case(lr_too_low, "update_ratio_low", frozenset({"update_ratio_high"})),
    "healthy_mlp": Case(healthy_mlp, None),
    "healthy_sgd_tanh": Case(healthy_sgd_tanh, None),
    "healthy_cnn": Case(healthy_cnn, None),
    "healthy_rnn": Case(healthy_rnn, None),
    "healthy_transformer": Case(healthy_transformer, None),
}


def run_corpus() -> dict[str, list[str]]:
    """Every run's finding rules, at one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for name, case in CORPUS.items():
            mon = case.build()
            out[name] = [f.rule for f in mon.findings()]
            mon.close()
        return out
    finally:
        torch.set_num_threads(threads)


def confusion_table(found: dict[str, list[str]]) -> str:
    """A Markdown table: one row per run, its expected rule and the rules the Monitor found."""
    rules = sorted({r for rs in found.values() for r in rs} | {
        c.expected for c in CORPUS.values() if c.expected is not None
    })
    head = "| run | expected | " + " | ".join(f"`{r}`" for r in rules) + " | verdict |"
    lines = [head, "|" + "---|" * (len(rules) + 3)]
    for name, case in CORPUS.items():
        got = set(found[name])
        ok = (case.expected in got if case.expected else not got) and not (got & case.forbidden)
        cells = ["**x**" if r == case.expected and r in got else ("x" if r in got else "")
                 for r in rules]
        expected = f"`{case.expected}`" if case.expected else "(none)"
        lines.append(f"| {name} | {expected} | " + " | ".join(cells) +
                     f" | {'right' if ok else 'WRONG'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    result = run_corpus()
    for k, v in result.items():
        print(f"{k:22s} {v}")
    print(confusion_table(result))
