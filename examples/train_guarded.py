"""Train a small character-level language model with traintech.clip.GuardedStep.

The data is synthetic but structured: sentences drawn from a tiny grammar, so the model has
something real to learn (the loss falls from ~3.3 nats to well under 1) and nothing is downloaded.
Every ``--poison-every`` steps one batch is corrupted (its loss is multiplied by NaN) to show the
guard skipping the update instead of destroying the weights.

Run::

    python examples/train_guarded.py                      # fp32, fused AdamW
    python examples/train_guarded.py --amp bf16           # bf16 autocast, no scaler needed
    python examples/train_guarded.py --amp fp16           # fp16 autocast + GradScaler("cpu")
    python examples/train_guarded.py --accumulate 4       # gradient accumulation
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from traintech.clip import GuardedStep, NormClip

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "a small bird"]
VERBS = ["sat on", "looked at", "ran past", "jumped over", "slept near"]
OBJECTS = ["the mat", "a tree", "the red car", "the house", "a quiet river"]


def make_corpus(n_sentences: int, generator: torch.Generator) -> str:
    """Sentences 'subject verb object.' picked at random from the grammar above."""
    picks = torch.randint(0, 5, (n_sentences, 3), generator=generator).tolist()
    return " ".join(f"{SUBJECTS[a]} {VERBS[b]} {OBJECTS[c]}." for a, b, c in picks)


class CharMLP(nn.Module):
    """A Bengio-style MLP language model: embed the last ``context`` chars, predict the next."""

    def __init__(self, vocab: int, context: int = 8, dim: int = 24, hidden: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.net = nn.Sequential(
            nn.Linear(context * dim, hidden), nn.GELU(), nn.Linear(hidden, vocab)
        )

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.net(self.embed(idx).flatten(1))


def batches(data: torch.Tensor, context: int, batch: int, generator: torch.Generator):
    while True:
        starts = torch.randint(0, len(data) - context - 1, (batch,), generator=generator)
        x = torch.stack([data[s : s + context] for s in starts.tolist()])
        y = data[starts + context]
        yield x, y


def train(
    steps: int = 300,
    amp: str = "none",
    fused: bool = True,
    accumulate: int = 1,
    max_norm: float = 1.0,
    poison_every: int = 97,
    seed: int = 0,
    log_every: int = 50,
) -> dict[str, float]:
    """Train and return the final loss and the guard's counters."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    text = make_corpus(2000, gen)
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    model = CharMLP(len(chars))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if amp == "fp16" else None
    guard = GuardedStep(optimizer, NormClip(max_norm), scaler=scaler, max_consecutive_skips=10)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    stream = batches(data, 8, 64, gen)
    loss_ema = math.log(len(chars))
    clipped = 0
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        for _ in range(accumulate):  # gradient accumulation: backward per micro-batch...
            x, y = next(stream)
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                loss = nn.functional.cross_entropy(model(x).float(), y) / accumulate
            if poison_every and step % poison_every == poison_every - 1:
                loss = loss * float("nan")  # a corrupt batch
            (scaler.scale(loss) if scaler is not None else loss).backward()
        report = guard.step()  # ...and one guarded step (one clip) per optimizer step
        if not bool(report.skipped):
            loss_ema = 0.95 * loss_ema + 0.05 * float(loss.detach()) * accumulate
            clipped += int(float(report.coef) < 1.0)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(
                f"step {step:4d}  loss {loss_ema:.3f}  |g| {float(report.norm):8.3f}  "
                f"coef {float(report.coef):.3f}  skipped {guard.steps_skipped}"
            )
    return {
        "loss": loss_ema,
        "steps_taken": guard.steps_taken,
        "steps_skipped": guard.steps_skipped,
        "clipped_fraction": clipped / max(1, guard.steps_taken),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    parser.add_argument("--no-fused", action="store_true", help="use the foreach AdamW")
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--max-norm", type=float, default=1.0)
    parser.add_argument("--poison-every", type=int, default=97)
    args = parser.parse_args()
    torch.set_num_threads(1)
    summary = train(
        steps=args.steps,
        amp=args.amp,
        fused=not args.no_fused,
        accumulate=args.accumulate,
        max_norm=args.max_norm,
        poison_every=args.poison_every,
    )
    print(summary)


if __name__ == "__main__":
    main()
