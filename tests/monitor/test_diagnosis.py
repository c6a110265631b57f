"""Each diagnosis rule, provoked by a real small model; a healthy run provokes none."""

import pytest
import torch
from _monitor_models import Log, mlp, regression_data, train
from torch import nn

from traintech.clip import ClipResult
from traintech.monitor import Monitor, diagnose


@pytest.fixture
def data(seed):
    return regression_data(512, 6, seed)


def rules(mon):
    return {f.rule: f for f in mon.findings()}


def test_healthy_run_has_no_findings(data):
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mon = Monitor(model, opt, activation_every=10, update_every=5)
    train(model, opt, mon, *data, 60)
    assert mon.findings() == []
    assert mon.summary().startswith("No problems found")


def test_exploding_gradients_from_a_diverging_learning_rate(data):
    model = nn.Sequential(nn.Linear(6, 16), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.45)  # above the stable step size
    mon = Monitor(model, opt)
    train(model, opt, mon, *data, 14)
    found = rules(mon)["exploding_gradients"]
    norms = [r["grad_norm"] for r in mon.history if r["grad_norm"] is not None]
    assert max(norms) / norms[0] > 1e4
    assert "gradient norm grew 10^" in found.message
    assert "clip the gradient norm at about" in found.message
    assert "lower the learning rate" in found.message.lower()
    assert {"0.weight", "1.weight"} <= set(found.layers)


def test_vanishing_gradients_in_a_deep_sigmoid_net(data):
    model = mlp((6,) + (32,) * 10 + (1,), act=nn.Sigmoid)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = Monitor(model, opt)
    train(model, opt, mon, *data, 4)
    found = rules(mon)["vanishing_gradients"]
    assert "'0.weight'" in found.message and "init" in found.message
    assert found.layers[0] == "0.weight"


def test_dead_relus_from_negative_biases(data):
    model = mlp((6, 64, 1))
    with torch.no_grad():
        model[0].bias.fill_(-4.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = Monitor(model, opt, activation_every=1)
    train(model, opt, mon, *data, 3)
    found = rules(mon)["dead_units"]
    dead = mon.history[-1]["activations"]["1"]["dead"]
    assert dead >= 0.5 and found.layers == ("1",)
    assert "LeakyReLU" in found.message and "He init" in found.message


@pytest.mark.parametrize(
    "opt_fn,rule",
    [
        (lambda p: torch.optim.Adam(p, lr=0.5), "update_ratio_high"),
        (lambda p: torch.optim.SGD(p, lr=1e-8), "update_ratio_low"),
    ],
)
def test_update_ratio_out_of_band_points_at_the_learning_rate(data, opt_fn, rule):
    model = mlp()
    opt = opt_fn(model.parameters())
    mon = Monitor(model, opt, update_every=1)
    train(model, opt, mon, *data, 5)
    found = rules(mon)
    assert rule in found and "learning rate" in found[rule].message
    assert found[rule].layers  # names the layers


def test_nonfinite_rule_names_the_module(data):
    model = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), Log(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = Monitor(model, opt, trace_nonfinite=True)
    train(model, opt, mon, *data, 2)
    found = rules(mon)["nonfinite"]
    assert found.layers == ("2",) and "module '2' (Log)" in found.message


def test_loss_spikes_point_at_adaptive_clipping(data):
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mon = Monitor(model, opt)
    train(model, opt, mon, *data, 40, loss_scale={30: 50.0})
    found = rules(mon)["spikes"]
    assert "1 loss spike(s)" in found.message and "ZClip" in found.message
    assert found.steps[0] == 30


def test_saturated_clipping_points_at_the_threshold(data):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = Monitor(model, opt)
    x, y = data
    for t in range(12):
        opt.zero_grad()
        loss = ((model(x[t * 32 : (t + 1) * 32]) - y[t * 32 : (t + 1) * 32]) ** 2).mean()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
        coef = torch.clamp(1e-3 / (norm + 1e-6), max=1.0)
        opt.step()
        mon.step(loss=loss, clip=ClipResult(norm, coef, torch.tensor(1e-3), torch.tensor(False)))
    found = rules(mon)["clipping_saturated"]
    assert "100% of the steps" in found.message


def test_diagnose_of_the_log_matches_summary(data, tmp_path):
    import json

    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.5)
    mon = Monitor(model, opt, tmp_path, update_every=1)
    train(model, opt, mon, *data, 6)
    mon.close()
    lines = [json.loads(x) for x in (tmp_path / "monitor.jsonl").read_text().splitlines()]
    assert diagnose(lines[1:], lines[0]["meta"]) == mon.findings()


@pytest.mark.parametrize(
    "zs,reported", [([4.5], False), ([4.5, 5.0, 4.2], True), ([9.0], True)]
)
def test_gradient_spikes_alone_need_several_or_a_large_one(zs, reported):
    records = [{"step": i, "events": [{"step": i, "kind": "grad_spike", "z": z, "value": 1.0}]}
               for i, z in enumerate(zs)]
    assert bool([f for f in diagnose(records, {}) if f.rule == "spikes"]) == reported
