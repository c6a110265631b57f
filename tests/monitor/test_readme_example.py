"""The README's recommended setup survives a run that explodes in its first steps."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from _corpus import CharRNN, _gen, _text
from torch import nn

import traintech.clip as ttclip
from traintech.monitor import Monitor

README = Path(__file__).resolve().parents[2] / "README.md"
SETUP = "ttclip.GuardedStep(optimizer, ttclip.ZClip(max_grad_norm=1.0))"


def _train(setup: str, seed: int, steps: int = 80) -> tuple[float, Monitor]:
    """The demo's exploding RNN (SGD at lr 2.0 on a loss summed over 50 steps)."""
    gen = _gen(seed)
    vocab, seq = 32, 50
    ids = _text(gen, 20_000, vocab)
    model = CharRNN(vocab, 64)
    optimizer = torch.optim.SGD(model.parameters(), lr=2.0)
    step = eval(setup, {"ttclip": ttclip, "optimizer": optimizer}) if setup else None  # noqa: S307
    monitor = Monitor(model, optimizer)
    offsets = torch.arange(seq + 1)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - seq - 1, (16,), generator=gen)
        chunk = ids[starts[:, None] + offsets]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(
            model(chunk[:, :-1]).reshape(-1, vocab), chunk[:, 1:].reshape(-1)
        ) * seq
        loss.backward()
        if step is None:
            optimizer.step()
            monitor.step(loss=loss)
        else:
            monitor.step(loss=loss, clip=step())
    starts = torch.randint(0, len(ids) - seq - 1, (64,), generator=gen)
    chunk = ids[starts[:, None] + offsets]
    with torch.no_grad():
        val = nn.functional.cross_entropy(
            model(chunk[:, :-1]).reshape(-1, vocab), chunk[:, 1:].reshape(-1)
        )
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    return float(val), monitor


def test_the_readme_shows_the_setup_tested_here():
    assert SETUP in README.read_text()


@pytest.mark.parametrize("seed", [0, 1])
def test_readme_setup_survives_an_explosion_in_the_first_steps(seed):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plain, plain_mon = _train("", seed)
            guarded, guarded_mon = _train(SETUP, seed)
    finally:
        torch.set_num_threads(threads)
    assert math.isfinite(guarded)
    assert guarded < 0.5 * plain, (guarded, plain)
    assert guarded < math.log(32)  # better than a uniform guess: it learned
    assert "exploding_gradients" in {f.rule for f in plain_mon.findings()}
    # The cap clips every step of this summed loss at lr 2.0: the monitor must not advise
    # raising it (that would hand the diverging step back), but lowering the learning rate.
    advice = {f.rule: f.message for f in guarded_mon.findings()}
    assert "exploding_gradients" not in advice
    assert "update_ratio_high" in advice
    assert "lower the learning rate" in advice["clipping_saturated"]
    assert "raise it" not in advice["clipping_saturated"]
