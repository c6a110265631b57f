"""The clip package's structure: imports point one way, the norm has one path and one seam."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

import traintech.clip
from traintech.clip import _norm

CLIP = Path(traintech.clip.__file__).resolve().parent


def _imports(path: Path) -> set[str]:
    """Modules of ``traintech`` that ``path`` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("traintech"):
            names.add(node.module or "")
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("traintech"))
    return names


def _graph() -> dict[str, set[str]]:
    modules = {f"traintech.clip.{p.stem}": p for p in CLIP.glob("_*.py")}
    return {name: _imports(path) & modules.keys() for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_clip_modules_import_each_other_without_cycles():
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_norm_depends_on_no_clipper():
    # The core (norm, shard keys) sits below everything else in the package.
    graph = _graph()
    assert graph["traintech.clip._sharded"] == set()
    assert graph["traintech.clip._norm"] == {"traintech.clip._sharded"}


def test_every_norm_goes_through_the_one_seam(monkeypatch):
    # The seam is where the cross-process all-reduce happens: the functional clip, the
    # clippers, per-layer clipping and the guarded step all reach it, exactly once per call.
    calls = []
    original = _norm.combine_partial_sets

    def spy(*args, **kwargs):
        calls.append(len(args[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(_norm, "combine_partial_sets", spy)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    for clip in (
        lambda: traintech.clip.clip_grad_norm_(model.parameters(), 1.0),
        lambda: traintech.clip.grad_norm(model.parameters()),
        lambda: traintech.clip.NormClip(1.0)(model.parameters()),
        lambda: traintech.clip.ZClip()(model.parameters()),
        lambda: traintech.clip.clip_grad_norm_per_layer_(model, 1.0, by="module"),
    ):
        calls.clear()
        clip()
        assert len(calls) == 1
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = traintech.clip.GuardedStep(opt, traintech.clip.NormClip(1.0))
    calls.clear()
    guard.step()
    assert len(calls) == 1


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_seam_reduces_each_set_and_roots_it(p):
    a = [torch.tensor(3.0), torch.tensor(-4.0)]
    partials = [_norm.partial_power_sums([t], p)[0] for t in a]
    out = _norm.combine_partial_sets(
        [(partials, [(), ()]), ([], [])],
        p,
        [torch.device("cpu")] * 2,
        [torch.float32, torch.float64],
    )
    expected = {1.0: 7.0, 2.0: 5.0, math.inf: 4.0}[p]
    assert out[0].dtype == torch.float32 and out[0].item() == expected
    assert out[1].dtype == torch.float64 and out[1].item() == 0.0
