"""Clipping under DDP and FSDP2 on real gloo processes vs one process on the whole batch."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.distributed

_spec = importlib.util.spec_from_file_location(
    "_clip_workers", Path(__file__).with_name("_clip_workers.py")
)
assert _spec is not None and _spec.loader is not None
W = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("_clip_workers", W)
_spec.loader.exec_module(W)

STEPS = 8
NAN_STEP = 4
MODES = ["ddp", "fsdp2", "tp"]
RUNS = [{"method": m, "mode": mode, "steps": STEPS} for mode in MODES for m in W.METHODS]
NAN_RUNS = [
    {"method": "guarded_ZClip", "mode": mode, "steps": STEPS, "nan_step": NAN_STEP}
    for mode in ("ddp", "fsdp2")
]


@pytest.fixture(scope="module")
def two_ranks(run_ranks: Any) -> dict[tuple[str, str, bool], list[dict[str, Any]]]:
    """One launch of 2 ranks runs every (method, mode) pair; tests read its results."""
    runs = RUNS + NAN_RUNS
    per_rank = run_ranks("_clip_workers:suite", 2, timeout=120, runs=runs)
    return {
        (run["method"], run["mode"], "nan_step" in run): [r[i] for r in per_rank]
        for i, run in enumerate(runs)
    }


def _same(a: Any, b: Any) -> bool:
    """Exact equality of nested state (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (a != a and b != b)  # NaN == NaN for our purpose


def _close(actual: Any, expected: Any) -> None:
    if isinstance(expected, torch.Tensor):
        torch.testing.assert_close(
            actual.double(), expected.double(), rtol=1e-5, atol=1e-5, equal_nan=True
        )
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for k in expected:
            _close(actual[k], expected[k])
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            _close(a, e)
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-5, nan_ok=True)
    else:
        assert actual == expected


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", W.METHODS)
def test_training_equals_single_process(
    two_ranks: dict[Any, list[dict[str, Any]]], method: str, mode: str
) -> None:
    ranks = two_ranks[(method, mode, False)]
    reference = W.train(method, "single", 0, 1, steps=STEPS, hidden=W.widths(mode))
    # the reference must clip on some steps and not others (else the test proves little)
    assert any(reference["clipped"]), reference["clipped"]
    for r in ranks:
        assert r["clipped"] == reference["clipped"]
        _close(r["params"], reference["params"])
        _close(r["norms"], reference["norms"])
        _close(r["state"], reference["state"])
    # identical decisions: the clipper's state is the same, bit for bit, on every rank
    assert _same(ranks[0]["state"], ranks[1]["state"])
    assert _same(ranks[0]["norms"], ranks[1]["norms"])


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_nan_on_one_rank_makes_every_rank_skip(
    two_ranks: dict[Any, list[dict[str, Any]]], mode: str
) -> None:
    ranks = two_ranks[("guarded_ZClip", mode, True)]
    expected_skips = [step == NAN_STEP for step in range(STEPS)]
    for r in ranks:
        assert r["skipped"] == expected_skips
        assert r["guard"]["skipped"] == 1
        assert torch.isnan(r["norms"][NAN_STEP])
    assert _same(ranks[0]["params"], ranks[1]["params"])
    assert _same(ranks[0]["guard"], ranks[1]["guard"])
    # and the run equals one process that skipped the same step
    reference = W.train("guarded_ZClip", "single", 0, 1, steps=STEPS, nan_step=NAN_STEP)
    assert reference["skipped"] == expected_skips
    _close(ranks[0]["params"], reference["params"])
    _close(ranks[0]["state"], reference["state"])
