"""traintech._distributed on real gloo processes: FSDP2 DTensor gradients, 2-D meshes."""

from __future__ import annotations

from typing import Any

import pytest
import torch

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def ranks(run_ranks: Any) -> list[dict[str, Any]]:
    return run_ranks("_prim_workers:primitives", 2)


def test_fsdp2_gradients_are_sharded_dtensors(ranks: list[dict[str, Any]]) -> None:
    assert all(r["all_dtensor"] for r in ranks)
    # Linear(5, 7) weight split 4 + 3 rows, Linear(3, 1) weight 1 + 0 rows: uneven and empty.
    assert ranks[0]["local_shapes"][0] == (4, 5) and ranks[1]["local_shapes"][0] == (3, 5)
    assert ranks[0]["local_shapes"][-2] == (1, 3) and ranks[1]["local_shapes"][-2] == (0, 3)
    assert all(r["key_lengths"] == [1] * 6 and r["n_groups"] == 1 for r in ranks)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_power_sums_are_global_with_one_collective(ranks: list[dict[str, Any]], p: float) -> None:
    full = ranks[0]["full"]
    expected = sum(g.abs().pow(p).sum() for g in full)
    for r in ranks:
        torch.testing.assert_close(r[f"power_sum_{p}"], expected, rtol=1e-12, atol=0)
        assert r[f"calls_{p}"] == 1


def test_max_is_global(ranks: list[dict[str, Any]]) -> None:
    expected = max(g.abs().max() for g in ranks[0]["full"])
    for r in ranks:
        torch.testing.assert_close(r["max"].double(), expected.double())


def test_unitwise_partials_need_no_reduction_for_row_shards(ranks: list[dict[str, Any]]) -> None:
    # weights (2-D, sharded on dim 0): rows are local; biases (1-D): whole-tensor norm, reduced
    assert all(r["unit_key_lengths"] == [0, 1, 0, 1, 0, 1] for r in ranks)


def test_nan_on_one_rank_reaches_every_rank(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        assert torch.isnan(r["nan_max"]) and torch.isnan(r["nan_sum"])
        assert bool(r["any_true"]) and not bool(r["any_false"])


def test_replicate_needs_no_reduction_and_partial_is_refused(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        assert r["replicate_key"] == ()
        assert "Partial" in r["partial_error"] and "redistribute" in r["partial_error"]


def test_two_dimensional_mesh(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        assert r["mesh2_key_lengths"] == [1, 2, 0, 2]
        expected = r["mesh2_expected"].expand(4)
        torch.testing.assert_close(r["mesh2_power_sums"], expected)
        assert r["mesh2_calls"] == 2  # one per distinct process group (dp, tp)
        # per-row partials (reduce dim 1): only mesh dims sharding dim 1 need a reduction
        assert r["mesh2_unit_key_lengths"] == [0, 2, 0, 1]


def test_clip_refuses_what_has_no_sharded_form(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        assert "norm_type must be > 0 for sharded" in r["errors"]["norm_type_0"]
        assert "Partial placement" in r["errors"]["partial"]
