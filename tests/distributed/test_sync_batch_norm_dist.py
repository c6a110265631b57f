"""SyncBatchNorm on real gloo processes vs one BatchNorm over the concatenated batch."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.distributed


def _scenario(name: str, splits: list[int], **over: Any) -> dict[str, Any]:
    sc = {
        "name": name,
        "splits": splits,
        "channels": 3,
        "spatial": [4, 5],
        "steps": 2,
        "momentum": 0.1,
        "affine": True,
        "track": True,
        "dtype": "float32",
        "seed": len(name) * 7 + sum(splits),
    }
    sc.update(over)
    return sc


TWO_RANKS = [
    _scenario("even-2d", [4, 4]),
    _scenario("uneven-2d", [5, 2]),
    _scenario("one-sample-rank", [6, 1]),
    _scenario("empty-rank", [5, 0]),
    _scenario("1d", [6, 3], spatial=[], channels=5, steps=3),
    _scenario("1d-seq", [3, 2], spatial=[7]),
    _scenario("3d", [2, 3], spatial=[2, 3, 2]),
    _scenario("cumulative-momentum", [4, 3], momentum=None, steps=3),
    _scenario("no-affine", [4, 3], affine=False),
    _scenario("no-running-stats", [4, 3], track=False),
    _scenario("float64", [3, 4], dtype="float64"),
    _scenario("bfloat16", [4, 4], dtype="bfloat16"),
]
THREE_RANKS = [
    _scenario("3ranks-uneven", [4, 1, 3]),
    _scenario("3ranks-empty-middle", [3, 0, 4], steps=3, momentum=None),
]
TOL = {
    "float32": {"rtol": 1e-5, "atol": 1e-5},
    "float64": {"rtol": 1e-10, "atol": 1e-10},
    "bfloat16": {"rtol": 2e-2, "atol": 3e-2},
}


DDP = {"steps": 3, "per_rank": 3}


@pytest.fixture(scope="module")
def two_ranks(run_ranks: Any) -> list[dict[str, Any]]:
    """One launch of 2 ranks runs every 2-rank check; the tests below read its results."""
    return run_ranks("_sbn_workers:suite", 2, scenarios=TWO_RANKS, ddp=DDP, one_value=True)


@pytest.fixture(scope="module")
def two_rank_results(two_ranks: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [r["scenarios"] for r in two_ranks]


@pytest.fixture(scope="module")
def three_ranks(run_ranks: Any) -> list[dict[str, Any]]:
    return run_ranks("_sbn_workers:suite", 3, scenarios=THREE_RANKS, subgroup=[0, 2])


@pytest.fixture(scope="module")
def three_rank_results(three_ranks: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [r["scenarios"] for r in three_ranks]


def _reference(sc: dict[str, Any], res0: dict[str, Any]) -> dict[str, Any]:
    """torch's BatchNorm in float64 over the concatenated batch, same steps."""
    cls = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
    bn = cls[len(sc["spatial"])](
        sc["channels"],
        momentum=sc["momentum"],
        affine=sc["affine"],
        track_running_stats=sc["track"],
    ).double()
    bn.load_state_dict(res0["init"])
    steps = []
    for x_full, r_full in zip(res0["xs"], res0["rs"], strict=True):
        x = x_full.to(getattr(torch, sc["dtype"])).double().requires_grad_(True)
        y = bn(x)
        (y * r_full).sum().backward()
        steps.append(
            {
                "y": y.detach(),
                "x_grad": x.grad,
                "w_grad": None if bn.weight is None else bn.weight.grad.clone(),
                "b_grad": None if bn.bias is None else bn.bias.grad.clone(),
            }
        )
        bn.zero_grad()
    bn.eval()
    x0 = res0["xs"][0].to(getattr(torch, sc["dtype"])).double()
    return {"steps": steps, "state": bn.state_dict(), "y_eval": bn(x0).detach()}


def _check(sc: dict[str, Any], per_rank: list[dict[str, Any]]) -> None:
    ref = _reference(sc, per_rank[0])
    tol = TOL[sc["dtype"]]

    def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
        torch.testing.assert_close(actual.double(), expected.double(), **tol)

    for step, ref_step in enumerate(ref["steps"]):
        ranks = [res["steps"][step] for res in per_rank]
        close(torch.cat([r["y"] for r in ranks]), ref_step["y"])
        close(torch.cat([r["x_grad"] for r in ranks]), ref_step["x_grad"])
        for key in ("w_grad", "b_grad"):
            if ref_step[key] is None:
                assert all(r[key] is None for r in ranks)
            else:  # each rank holds its share; DDP sums (or averages) them
                close(torch.stack([r[key] for r in ranks]).sum(0), ref_step[key])
    for res in per_rank:
        assert res["state"].keys() == ref["state"].keys()
        for key, value in ref["state"].items():
            if key == "num_batches_tracked":
                assert int(res["state"][key]) == int(value) == sc["steps"]
            else:
                close(res["state"][key], value)
    close(torch.cat([res["y_eval"] for res in per_rank]), ref["y_eval"])


@pytest.mark.parametrize("index", range(len(TWO_RANKS)), ids=[s["name"] for s in TWO_RANKS])
def test_two_ranks_equal_single_batchnorm(two_rank_results: Any, index: int) -> None:
    _check(TWO_RANKS[index], [rank_results[index] for rank_results in two_rank_results])


@pytest.mark.parametrize("index", range(len(THREE_RANKS)), ids=[s["name"] for s in THREE_RANKS])
def test_three_ranks_equal_single_batchnorm(three_rank_results: Any, index: int) -> None:
    _check(THREE_RANKS[index], [rank_results[index] for rank_results in three_rank_results])


def test_forward_matches_float64_formula(two_rank_results: Any) -> None:
    """The normalized output is the textbook formula over the union of the ranks' samples."""
    sc = TWO_RANKS[1]
    per_rank = [r[1] for r in two_rank_results]
    x = per_rank[0]["xs"][0]
    w, b = per_rank[0]["init"]["weight"].double(), per_rank[0]["init"]["bias"].double()
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    actual = torch.cat([r["steps"][0]["y"] for r in per_rank]).double()
    torch.testing.assert_close(actual, expected, **TOL[sc["dtype"]])


def test_ddp_with_converted_model_equals_single_process(two_ranks: list[dict[str, Any]]) -> None:
    """convert_sync_batchnorm + DDP for 3 SGD steps == one process on the whole batch."""
    steps, per_rank, world = DDP["steps"], DDP["per_rank"], 2
    states = [r["ddp"] for r in two_ranks]
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(per_rank * world, 2, 4, 4, generator=g)
        t = torch.randn(per_rank * world, 3, generator=g)
        loss = ((model(x) - t) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    expected = model.state_dict()
    for state in states:
        assert state.keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6)


def test_one_value_per_channel_in_total_raises_on_every_rank(
    two_ranks: list[dict[str, Any]],
) -> None:
    messages = [r["one_value"] for r in two_ranks]
    assert all("more than 1 value per channel" in m for m in messages), messages


def test_process_group_limits_the_reduction_to_its_ranks(three_ranks: list[dict[str, Any]]) -> None:
    """Ranks 0 and 2 in a group: their statistics are those of their two slices only."""
    assert three_ranks[1]["subgroup"] is None
    r0, r2 = three_ranks[0]["subgroup"], three_ranks[2]["subgroup"]
    reference = nn.BatchNorm1d(2)
    expected = reference(r0["full"])
    actual = torch.cat([r0["y"], r2["y"]])
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    for r in (r0, r2):
        torch.testing.assert_close(r["running_var"], reference.running_var, rtol=1e-5, atol=1e-6)
