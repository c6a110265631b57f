"""The guarded training example runs, learns, and skips exactly the poisoned batches."""

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_guarded.py"


def _load():
    spec = importlib.util.spec_from_file_location("train_guarded", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("amp", "fused"), [("none", True), ("fp16", True), ("bf16", False)])
def test_example_trains_and_skips_poisoned_batches(amp, fused):
    example = _load()
    out = example.train(steps=40, amp=amp, fused=fused, poison_every=10, log_every=0)
    assert out["steps_skipped"] == 4
    assert out["steps_taken"] == 36
    assert math.isfinite(out["loss"])
    assert out["loss"] < math.log(25) - 0.5  # 25 characters: below the uniform-guess loss
