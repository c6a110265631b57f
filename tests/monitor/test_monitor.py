import copy
import json
import math

import pytest
import torch
from _monitor_models import Log, LogBlock, SqrtAbs, mlp, regression_data, train
from torch import nn

from traintech.clip import ClipResult
from traintech.monitor import Monitor, NonFiniteError, activation_stats


def f64_norm(t):
    return t.detach().double().pow(2).sum().sqrt().item()


@pytest.fixture
def setup(seed):
    model = mlp()
    x, y = regression_data(256, 6, seed)
    return model, x, y


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_norms_match_float64_reference(setup, dtype):
    model, x, y = setup
    model = model.to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mon = Monitor(model, opt)
    train(model, opt, mon, x.to(dtype), y.to(dtype), 1)
    rec = mon.history[-1]
    ref = {n: f64_norm(p.grad) for n, p in model.named_parameters()}
    assert rec["grad_norms"] == pytest.approx(ref, rel=1e-6)
    assert rec["grad_norm"] == pytest.approx(math.sqrt(sum(v * v for v in ref.values())), rel=1e-6)
    loss = ((model(x[:32].to(dtype)) - y[:32].to(dtype)) ** 2).mean().item()
    assert rec["loss"] == pytest.approx(loss, rel=1e-6)


@pytest.mark.parametrize("optim", ["sgd", "adamw"])
def test_update_ratio_is_actual_change_over_weight_norm(setup, optim):
    model, x, y = setup
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if optim == "sgd"
           else torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1))
    mon = Monitor(model, opt, update_every=2)
    train(model, opt, mon, x, y, 2)  # steps 0 (sampled) and 1 (not sampled)
    assert "update_ratio" in mon.history[0] and "update_ratio" not in mon.history[1]
    before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    train(model, opt, mon, x, y, 1, start=2)
    ref = {
        n: f64_norm(p.detach().double() - before[n]) / f64_norm(before[n])
        for n, p in model.named_parameters()
    }
    assert mon.history[-1]["update_ratio"] == pytest.approx(ref, rel=1e-4)


@pytest.mark.parametrize("shape,unit_dim", [((8, 5), 1), ((4, 6, 5), 2), ((3, 5, 4, 4), 1)])
def test_activation_stats_match_float64_reference(shape, unit_dim, seed):
    x = torch.randn(shape, generator=seed) - 0.3
    x = torch.relu(x)
    x.select(unit_dim, 2).zero_()  # one unit dead for sure
    x64 = x.double()
    mean = x64.mean().item()
    std = (x64 - mean).pow(2).mean().sqrt().item()
    others = [d for d in range(x.dim()) if d != unit_dim]
    dead = (x64.amax(dim=others) <= 0).double().mean().item()
    got = activation_stats(x, dead=True).tolist()
    assert got == pytest.approx([mean, std, dead], rel=1e-5, abs=1e-6)
    assert got[2] >= 1 / shape[unit_dim]
    assert math.isnan(activation_stats(x, dead=False)[2].item())


def test_activation_hooks_exist_only_for_sampled_steps(setup):
    model, x, y = setup
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = Monitor(model, opt, activation_every=3)
    relu = model[1]
    hooked = []
    for t in range(7):
        hooked.append(len(relu._forward_hooks))
        train(model, opt, mon, x, y, 1, start=t)
    assert hooked == [1, 0, 0, 1, 0, 0, 1]
    sampled = [r["step"] for r in mon.history if "activations" in r]
    assert sampled == [0, 3, 6]
    acts = mon.history[-1]["activations"]
    assert set(acts) == {"0", "1", "2", "3", "4"}
    assert acts["0"]["dead"] is None and acts["1"]["dead"] is not None


def test_activation_stats_match_the_forward_pass(setup):
    model, x, y = setup
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # weights stay, so we can recompute
    mon = Monitor(model, opt, activation_every=1)
    train(model, opt, mon, x, y, 1)
    h = torch.relu(model[0](x[:32])).detach()
    ref = activation_stats(h.double(), dead=True).tolist()
    got = mon.history[-1]["activations"]["1"]
    assert [got["mean"], got["std"], got["dead"]] == pytest.approx(ref, rel=1e-5, abs=1e-7)


def test_eval_forwards_are_not_counted(setup):
    model, x, y = setup
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mon = Monitor(model, opt, activation_every=1)
    model.eval()
    model(x * 100)  # would change the statistics if counted
    model.train()
    train(model, opt, mon, x, y, 1)
    h = torch.relu(model[0](x[:32])).detach()
    assert mon.history[-1]["activations"]["1"]["mean"] == pytest.approx(h.mean().item(), rel=1e-5)


def test_clip_result_is_logged_and_watched(setup):
    model, x, y = setup
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = Monitor(model, opt)
    opt.zero_grad()
    ((model(x[:32]) - y[:32]) ** 2).mean().backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
    coef = torch.clamp(0.05 / (norm + 1e-6), max=1.0)
    opt.step()
    rec = mon.step(clip=ClipResult(norm, coef, torch.tensor(0.05), torch.tensor(False)))
    assert rec["clip"] == pytest.approx(
        {"norm": norm.item(), "coef": coef.item(), "threshold": 0.05, "skip": False}, rel=1e-6
    )
    assert rec["grad_norm"] == pytest.approx(0.05, rel=1e-4)  # measured after clipping
    assert mon.grad_spikes.count == 1 and mon.grad_spikes._warm == [pytest.approx(norm.item())]


def test_every_logs_every_kth_step(setup):
    model, x, y = setup
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = Monitor(model, opt, every=3)
    records = train(model, opt, mon, x, y, 7)
    assert [r is not None for r in records] == [True, False, False, True, False, False, True]
    assert [r["step"] for r in mon.history] == [0, 3, 6]


def test_logs_are_written_and_flushed_each_step(setup, tmp_path):
    model, x, y = setup
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = Monitor(model, opt, tmp_path / "run", update_every=2)
    train(model, opt, mon, x, y, 3)
    lines = (tmp_path / "run" / "monitor.jsonl").read_text().splitlines()  # not closed yet
    assert len(lines) == 4
    meta, *recs = [json.loads(line) for line in lines]
    assert meta["meta"]["params"]["0.weight"] == [[16, 6], 96]
    assert meta["run"] == 1 and all(r.pop("run") == 1 for r in recs)  # a run id on every line
    assert recs == list(mon.history)
    csv_lines = (tmp_path / "run" / "monitor.csv").read_text().splitlines()
    header = csv_lines[0].split(",")
    assert len(csv_lines) == 4 and header[:3] == ["step", "loss", "grad_norm"]
    row = dict(zip(header, csv_lines[1].split(","), strict=True))
    assert float(row["grad_norm/2.weight"]) == recs[0]["grad_norms"]["2.weight"]
    assert row["update_ratio/0.weight"] != "" and csv_lines[2].split(",")[header.index(
        "update_ratio/0.weight")] == ""
    mon.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx([r["loss"] for r in recs])
    assert "grad_norm/0.weight" in acc.Tags()["scalars"]


def test_state_dict_resumes_bit_for_bit(setup):
    model, x, y = setup
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    kw = {"spike_warmup": 5, "update_every": 3, "activation_every": 4}
    mon = Monitor(model, opt, **kw)
    spikes = {25: 30.0, 26: 30.0}
    train(model, opt, mon, x, y, 20)
    model_b = copy.deepcopy(model)
    opt_b = torch.optim.Adam(model_b.parameters(), lr=1e-2)
    opt_b.load_state_dict(copy.deepcopy(opt.state_dict()))
    mon_b = Monitor(model_b, opt_b, **kw)
    mon_b.load_state_dict(copy.deepcopy(mon.state_dict()))
    a = train(model, opt, mon, x, y, 20, start=20, loss_scale=spikes)
    b = train(model_b, opt_b, mon_b, x, y, 20, start=20, loss_scale=spikes)
    assert a == b
    assert mon.state_dict() == mon_b.state_dict()
    assert [e["step"] for e in mon.events if e["kind"] == "loss_spike"] == [25, 26]


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"every": 0}, ValueError, "every"),
        ({"every": 1.5}, TypeError, "every"),
        ({"activation_every": 0}, ValueError, "activation_every"),
        ({"update_every": -1}, ValueError, "update_every"),
        ({"history": 0}, ValueError, "history"),
    ],
)
def test_bad_arguments(setup, kwargs, error, match):
    with pytest.raises(error, match=match):
        Monitor(setup[0], **kwargs)


def test_unwritable_log_dir_is_named(setup, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="log_dir.*file/run"):
        Monitor(setup[0], log_dir=blocker / "run")


def test_bad_types(setup):
    with pytest.raises(TypeError, match="model"):
        Monitor("not a model")
    with pytest.raises(TypeError, match="optimizer"):
        Monitor(setup[0], optimizer=object())
    mon = Monitor(setup[0])
    with pytest.raises(TypeError, match="clip"):
        mon.step(clip=1.0)
    with pytest.raises(ValueError, match="_version"):
        mon.load_state_dict({"_version": 0})


def _one_step(model, x, mon, target=None):
    out = model(x)
    loss = out.pow(2).mean() if target is None else (out - target).pow(2).mean()
    loss.backward()
    return mon.step(loss=loss)


def _nonfinite(mon):
    return [e for e in mon.events if e["kind"] == "nonfinite"]


def test_nan_origin_forward_module(seed):
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), Log(), nn.Linear(4, 2))
    mon = Monitor(model, trace_nonfinite=True)
    _one_step(model, torch.randn(8, 4, generator=seed), mon)
    (event,) = _nonfinite(mon)
    assert (event["phase"], event["module"]) == ("forward", "2")
    assert "module '2' (Log)" in event["message"]


def test_nan_origin_functional_code_in_container(seed):
    model = nn.Sequential(nn.Linear(4, 4), LogBlock())
    mon = Monitor(model, trace_nonfinite=True)
    _one_step(model, torch.randn(8, 4, generator=seed), mon)
    (event,) = _nonfinite(mon)
    assert event["module"] == "1.out"
    assert "functional code in the forward of '1'" in event["message"]


def test_nan_origin_in_the_data(seed):
    model = mlp()
    mon = Monitor(model, trace_nonfinite=True)
    x = torch.randn(8, 6, generator=seed)
    x[3, 1] = float("nan")
    _one_step(model, x, mon)
    (event,) = _nonfinite(mon)
    assert "model's input" in event["message"]


def test_nan_origin_backward(seed):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), SqrtAbs(), nn.Linear(8, 1))
    mon = Monitor(model, trace_nonfinite=True)
    rec = _one_step(model, torch.randn(16, 4, generator=seed), mon)
    assert rec["loss"] is not None  # the forward pass was finite
    (event,) = _nonfinite(mon)
    assert (event["phase"], event["module"]) == ("backward", "2")
    assert "SqrtAbs" in event["message"]
    # ReLU's backward zeroes the NaNs again: no parameter gradient shows it, only the trace.
    assert event["params"] == []


def _zero_row_model_and_batch(seed):
    model = nn.Sequential(nn.Linear(4, 8), SqrtAbs(), nn.Linear(8, 1))
    with torch.no_grad():
        model[0].bias.zero_()
    x = torch.randn(16, 4, generator=seed)
    x[0] = 0.0  # the first layer outputs exact zeros for this row: sqrt's gradient is inf
    return model, x


def test_nan_origin_backward_reaching_parameters(seed):
    model, x = _zero_row_model_and_batch(seed)
    mon = Monitor(model, trace_nonfinite=True)
    _one_step(model, x, mon)
    (event,) = _nonfinite(mon)
    assert (event["phase"], event["module"]) == ("backward", "1")
    assert set(event["params"]) == {"0.weight", "0.bias"}


def test_nonfinite_without_tracing_names_parameters(seed):
    model, x = _zero_row_model_and_batch(seed)
    mon = Monitor(model)
    _one_step(model, x, mon)
    (event,) = _nonfinite(mon)
    assert event["phase"] == "gradient" and event["module"] == "0.bias"
    assert "trace_nonfinite=True" in event["message"]


def test_raise_on_nonfinite_and_offstep_detection(seed, tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), Log())
    mon = Monitor(model, log_dir=tmp_path, every=5, trace_nonfinite=True, raise_on_nonfinite=True)
    with pytest.raises(NonFiniteError, match="module '1' \\(Log\\)"):
        for _ in range(3):
            model.zero_grad()
            _one_step(model, torch.randn(8, 4, generator=seed), mon)
    # Step 0 is logged; the NaN at step 0 was already raised; the line is on disk.
    lines = (tmp_path / "monitor.jsonl").read_text().splitlines()
    assert "nonfinite" in lines[-1]


def test_trace_catches_nan_on_a_step_that_is_not_logged(seed):
    model = nn.Sequential(nn.Linear(4, 4), Log())
    mon = Monitor(model, every=5, trace_nonfinite=True)
    x = torch.rand(8, 4, generator=seed)
    with torch.no_grad():
        model[0].weight.abs_()
        model[0].bias.fill_(0.1)
    for t in range(4):
        model.zero_grad()
        _one_step(model, -x if t == 2 else x, mon)
    assert [e["step"] for e in _nonfinite(mon)] == [2]


class WithUnused(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        return self.net(x)


def test_unused_parameters_and_switches(setup, tmp_path):
    net, x, y = setup
    model = WithUnused(net)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Monitor(model, opt, tmp_path, activation_every=None, update_every=None,
                 tensorboard=False, csv=False) as mon:
        train(model, opt, mon, x, y, 2)
        rec = mon.history[-1]
        assert "unused.weight" not in rec["grad_norms"] and "net.0.weight" in rec["grad_norms"]
        assert "activations" not in rec and "update_ratio" not in rec
        assert len(net[1]._forward_hooks) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["monitor.jsonl"]
    mon = Monitor(model, opt, trace_nonfinite=True)
    # update-ratio pre-hook; tracer hook + activation hook (step 0 is sampled)
    assert len(opt._optimizer_step_pre_hooks) == 1 and len(net[1]._forward_hooks) == 2
    mon.close()  # removes every hook it added
    assert len(opt._optimizer_step_pre_hooks) == 0 and len(net[1]._forward_hooks) == 0


def test_float_loss_and_no_optimizer(setup):
    model, x, y = setup
    mon = Monitor(model)
    ((model(x[:32]) - y[:32]) ** 2).mean().backward()
    rec = mon.step(loss=0.25)
    assert rec["loss"] == 0.25 and "update_ratio" not in rec
    mon.log_event("note", detail="hello")
    assert mon.events[-1] == {"step": 0, "kind": "note", "detail": "hello"}


def test_with_the_guarded_step_and_a_clipper(setup):
    from traintech.clip import GuardedStep, NormClip

    model, x, y = setup
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    guarded = GuardedStep(opt, NormClip(0.05))
    mon = Monitor(model, opt, update_every=1)
    for t in range(3):
        opt.zero_grad()
        loss = ((model(x[t * 32 : (t + 1) * 32]) - y[t * 32 : (t + 1) * 32]) ** 2).mean()
        loss.backward()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        report = guarded.step()
        rec = mon.step(loss=loss, clip=report.clip)
        assert rec["clip"]["threshold"] == pytest.approx(0.05)
        assert rec["clip"]["coef"] == pytest.approx(0.05 / (report.norm.item() + 1e-6), rel=1e-5)
        ref = {n: f64_norm(p.detach() - before[n]) / f64_norm(before[n])
               for n, p in model.named_parameters()}
        assert rec["update_ratio"] == pytest.approx(ref, rel=1e-4)


def test_every_can_be_given_by_position(tmp_path):
    from torch import nn

    from traintech.monitor import Monitor

    model = nn.Linear(3, 2)
    monitor = Monitor(model, None, tmp_path / "run", 2)
    assert monitor.every == 2
    monitor.close()
