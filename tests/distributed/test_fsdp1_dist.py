"""A real FSDP1 model on 2 gloo ranks: traintech refuses its flat shards, naming the fix."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def results(run_ranks: Any) -> list[dict[str, Any]]:
    return run_ranks("_fsdp1_workers:refusals", 2, timeout=120)


def test_each_rank_holds_a_shard_whose_norm_is_not_the_model_norm(results):
    # The hazard: clipping each rank by its own shard's norm would use different coefficients.
    shard = [r["shard_norm"].item() for r in results]
    full = [r["fsdp_norm"].item() for r in results]
    assert full[0] == pytest.approx(full[1])
    assert all(s < f * (1 - 1e-3) for s, f in zip(shard, full, strict=True))


@pytest.mark.parametrize("uop", [False, True])
def test_every_entry_point_refuses_fsdp1_and_points_to_the_fix(results, uop):
    for rank_result in results:
        messages = rank_result[f"uop={uop}"]
        assert messages, "no entry point was tried"
        for name, message in messages.items():
            assert "FSDP1" in message, f"{name}: {message}"
            assert "clip_grad_norm_(max_norm)" in message and "FSDP2" in message, name
        assert rank_result[f"uop={uop} untouched"]
