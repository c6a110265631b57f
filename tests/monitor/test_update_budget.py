"""The update-ratio sampler copies a bounded number of elements per step, in rotation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import traintech.monitor._updates as updates
from traintech.monitor import Monitor
from traintech.monitor._updates import plan_chunks


@pytest.mark.parametrize(
    ("numels", "budget"), [([10, 3, 7], 8), ([5], 5), ([1, 1, 1], 100), ([100, 2], 33)]
)
def test_chunks_cover_every_element_once_within_the_budget(numels, budget):
    chunks = plan_chunks(numels, budget)
    assert all(sum(b - a for _, a, b in c) <= budget for c in chunks)
    covered = {i: [] for i in range(len(numels))}
    for c in chunks:
        for i, a, b in c:
            covered[i].append((a, b))
    for i, n in enumerate(numels):
        spans = sorted(covered[i])
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(x[1] == y[0] for x, y in zip(spans, spans[1:], strict=False))


def test_sampler_never_copies_more_than_the_budget(monkeypatch):
    copied: list[int] = []
    real = updates.foreach_copy

    def spy(tensors):
        copied.append(sum(t.numel() for t in tensors))
        return real(tensors)

    monkeypatch.setattr(updates, "foreach_copy", spy)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))  # 630 + 30 + 150 + 5
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    budget = 200
    mon = Monitor(model, opt, update_every=1, update_max_numel=budget)
    seen: set[str] = set()
    x = torch.randn(8, 20)
    for _ in range(8):
        opt.zero_grad()
        before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
        model(x).pow(2).mean().backward()
        opt.step()
        rec = mon.step()
        chunk = mon._updates.chunks[(len(copied) - 1) % len(mon._updates.chunks)]
        for index, a, b in chunk:
            name, p = mon._updates.params[index]
            w0 = before[name].reshape(-1)[a:b]
            ref = float((p.detach().double().reshape(-1)[a:b] - w0).norm() / w0.norm())
            assert rec["update_ratio"][name] == pytest.approx(ref, rel=1e-5)
        seen |= set(rec["update_ratio"])
    assert copied and max(copied) <= budget
    assert seen == {n for n, _ in model.named_parameters()}  # the rotation reaches every one
    mon.close()


def test_a_small_model_is_measured_whole_each_time():
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = Monitor(model, opt, update_every=1)
    model(torch.ones(3, 4)).sum().backward()
    opt.step()
    assert set(mon.step()["update_ratio"]) == {"weight", "bias"}


@pytest.mark.parametrize(("value", "exc"), [(0, ValueError), (1.5, TypeError)])
def test_update_max_numel_is_checked(value, exc):
    with pytest.raises(exc, match="update_max_numel"):
        Monitor(nn.Linear(2, 1), None, update_max_numel=value)
