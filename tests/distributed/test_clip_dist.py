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
# torch's fused optimizers have no DTensor sharding rule (NotImplementedError for
# aten._fused_sgd_), so the fused guarded step runs under DDP only.
PAIRS = [(m, mode) for mode in MODES for m in W.METHODS if "fused" not in m or mode == "ddp"]
RUNS = [{"method": m, "mode": mode, "steps": STEPS} for m, mode in PAIRS]
NAN_PAIRS = [
    ("guarded_ZClip", "ddp"),
    ("guarded_ZClip", "fsdp2"),
    ("guarded_fused_NormClip", "ddp"),
]
NAN_RUNS = [
    {"method": m, "mode": mode, "steps": STEPS, "nan_step": NAN_STEP} for m, mode in NAN_PAIRS
]
THREE_PAIRS = [(m, "fsdp2") for m in ("clip_grad_norm_", "per_layer", "ZClip", "AGC")]
THREE_RUNS = [{"method": m, "mode": mode, "steps": STEPS} for m, mode in THREE_PAIRS] + [
    {"method": "guarded_ZClip", "mode": "fsdp2", "steps": STEPS, "nan_step": NAN_STEP}
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


@pytest.fixture(scope="module")
def three_ranks(run_ranks: Any) -> dict[tuple[str, str, bool], list[dict[str, Any]]]:
    """FSDP2 over 3 ranks: shards of 9 rows (3+3+3), 5 (2+2+1), 3 (1+1+1)."""
    per_rank = run_ranks("_clip_workers:suite", 3, timeout=120, runs=THREE_RUNS)
    return {
        (run["method"], run["mode"], "nan_step" in run): [r[i] for r in per_rank]
        for i, run in enumerate(THREE_RUNS)
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


def _check_training(ranks: list[dict[str, Any]], method: str, mode: str) -> None:
    reference = W.train(method, "single", 0, 1, steps=STEPS, hidden=W.widths(mode))
    # the reference must clip on some steps (else the test proves little)
    assert any(reference["clipped"]), reference["clipped"]
    for r in ranks:
        assert r["clipped"] == reference["clipped"]
        assert r["fused"] == reference["fused"]
        _close(r["params"], reference["params"])
        _close(r["norms"], reference["norms"])
        _close(r["state"], reference["state"])
    # identical decisions: the clipper's state is the same, bit for bit, on every rank
    for r in ranks[1:]:
        assert _same(ranks[0]["state"], r["state"])
        assert _same(ranks[0]["norms"], r["norms"])


def _check_nan_skip(ranks: list[dict[str, Any]], method: str) -> None:
    expected_skips = [step == NAN_STEP for step in range(STEPS)]
    for r in ranks:
        assert r["skipped"] == expected_skips
        assert r["guard"]["skipped"] == 1
        assert torch.isnan(r["norms"][NAN_STEP])
    for r in ranks[1:]:
        assert _same(ranks[0]["params"], r["params"])
        assert _same(ranks[0]["guard"], r["guard"])
    # and the run equals one process that skipped the same step
    reference = W.train(method, "single", 0, 1, steps=STEPS, nan_step=NAN_STEP)
    assert reference["skipped"] == expected_skips
    _close(ranks[0]["params"], reference["params"])
    _close(ranks[0]["state"], reference["state"])


@pytest.mark.parametrize(("method", "mode"), PAIRS, ids=[f"{m}-{mode}" for m, mode in PAIRS])
def test_training_equals_single_process(
    two_ranks: dict[Any, list[dict[str, Any]]], method: str, mode: str
) -> None:
    _check_training(two_ranks[(method, mode, False)], method, mode)


@pytest.mark.parametrize(("method", "mode"), NAN_PAIRS, ids=[f"{m}-{d}" for m, d in NAN_PAIRS])
def test_nan_on_one_rank_makes_every_rank_skip(
    two_ranks: dict[Any, list[dict[str, Any]]], method: str, mode: str
) -> None:
    _check_nan_skip(two_ranks[(method, mode, True)], method)


@pytest.mark.parametrize(("method", "mode"), THREE_PAIRS, ids=[m for m, _ in THREE_PAIRS])
def test_three_ranks_fsdp2_equals_single_process(
    three_ranks: dict[Any, list[dict[str, Any]]], method: str, mode: str
) -> None:
    _check_training(three_ranks[(method, mode, False)], method, mode)


def test_three_ranks_nan_on_last_rank_makes_every_rank_skip(
    three_ranks: dict[Any, list[dict[str, Any]]],
) -> None:
    _check_nan_skip(three_ranks[("guarded_ZClip", "fsdp2", True)], "guarded_ZClip")
