import copy
import json

import pytest
import torch
from torch import nn

from traintech.clip import Clipper, ClipResult
from traintech.monitor import Monitor, RollbackGuard, SpikeDetector


class EmaClip(Clipper):
    """A small stateful clipper (EMA threshold) to check the guard restores clipper state."""

    def __init__(self) -> None:
        self.ema = torch.tensor(0.0)
        self.steps = 0

    def decide(self, norm):
        self.ema = 0.9 * self.ema + 0.1 * norm if self.steps else norm.clone()
        self.steps += 1
        thr = 2.0 * self.ema
        coef = torch.clamp(thr / (norm + 1e-6), max=1.0)
        return ClipResult(norm, coef, thr, torch.tensor(False))

    def state_dict(self):
        return {"_version": 1, "ema": self.ema.clone(), "steps": self.steps}

    def load_state_dict(self, sd):
        super().load_state_dict(sd)
        self.ema, self.steps = sd["ema"].clone(), sd["steps"]


def make_data(n_batches, batch=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 1, generator=g)
    x = torch.randn(n_batches * batch, 8, generator=g)
    return x, torch.tanh(x @ w) + 0.05 * torch.randn(x.shape[0], 1, generator=g)


def run(steps, bad=None, guard_kw=None, batch=32):
    x, y = make_data(steps, batch)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    guard = None if guard_kw is None else RollbackGuard(model, opt, **guard_kw)
    for t in range(steps):
        xb, yb = x[t * batch : (t + 1) * batch], y[t * batch : (t + 1) * batch]
        if bad and bad[0] <= t < bad[1]:
            yb = yb * 30 + 10  # a stretch of corrupt targets
        loss = ((model(xb) - yb) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if guard is not None:
            guard.step(loss)
    with torch.no_grad():
        final = ((model(x[:512]) - y[:512]) ** 2).mean().item()
    return final, guard


def test_persistent_spike_is_rolled_back_and_the_run_recovers():
    clean, _ = run(150)
    spiked, _ = run(150, bad=(80, 90))
    guarded, guard = run(150, bad=(80, 90), guard_kw={"every": 10, "patience": 3})
    assert spiked > 2.5 * clean  # the corrupt stretch does lasting damage unguarded
    assert guarded == pytest.approx(clean, rel=0.25)
    first, last = guard.rollbacks[0], guard.rollbacks[-1]
    assert (first.step, first.restored_step, first.skip) == (82, 79, (80, 82))
    assert last.skip == (80, 89) and last.discarded == (80, 89)
    assert [r.step for r in guard.rollbacks] == list(range(82, 90))


def test_no_rollback_without_spikes():
    clean, _ = run(60)
    guarded, guard = run(60, guard_kw={"every": 10, "patience": 3})
    assert guard.rollbacks == [] and guarded == clean


def _assert_state_equal(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_state_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            _assert_state_equal(u, v)
    else:
        assert a == b


@pytest.mark.parametrize("lr_factor", [None, 0.5])
def test_states_are_restored_exactly(lr_factor):
    x, y = make_data(40)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + 0.01 * s))
    clipper = EmaClip()
    guard = RollbackGuard(
        model, opt, sched, clipper, every=5, patience=3, lr_factor=lr_factor,
        detector=SpikeDetector(warmup=5),
    )
    saved = None
    events = []
    for t in range(26):
        loss = ((model(x[t * 32 : (t + 1) * 32]) - y[t * 32 : (t + 1) * 32]) ** 2).mean()
        if 20 <= t < 24:
            loss = loss * 100.0
        opt.zero_grad()
        loss.backward()
        clipper(model.parameters())
        opt.step()
        sched.step()
        event = guard.step(loss)
        if t == 19:
            saved = copy.deepcopy(
                (model.state_dict(), opt.state_dict(), sched.state_dict(), clipper.state_dict())
            )
        if event is not None:
            events.append(event)
            m_sd, o_sd, s_sd, c_sd = saved
            _assert_state_equal(model.state_dict(), m_sd)
            _assert_state_equal(clipper.state_dict(), c_sd)
            scale = 1.0 if lr_factor is None else lr_factor
            got_o, got_s = opt.state_dict(), sched.state_dict()
            _assert_state_equal(got_o["state"], o_sd["state"])
            assert [g["lr"] for g in got_o["param_groups"]] == pytest.approx(
                [g["lr"] * scale for g in o_sd["param_groups"]]
            )
            assert got_s["base_lrs"] == pytest.approx([lr * scale for lr in s_sd["base_lrs"]])
            assert got_s["last_epoch"] == s_sd["last_epoch"]
    # Rewound at 22 (3 spikes), then at 23 (alert: one more spike); same snapshot both times.
    assert [(e.step, e.restored_step) for e in events] == [(22, 19), (23, 19)]
    assert guard.lr_scale == (1.0 if lr_factor is None else 0.5)


def test_max_rollbacks_raises():
    with pytest.raises(RuntimeError, match="max_rollbacks=1"):
        run(60, bad=(30, 40), guard_kw={"every": 10, "patience": 2, "max_rollbacks": 1})


def test_rollbacks_are_logged_by_the_monitor(tmp_path):
    x, y = make_data(40)
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = Monitor(model, opt, tmp_path)
    guard = RollbackGuard(model, opt, every=5, patience=2, monitor=mon,
                          detector=SpikeDetector(warmup=5))
    for t in range(20):
        loss = ((model(x[t * 32 : (t + 1) * 32]) - y[t * 32 : (t + 1) * 32]) ** 2).mean()
        if t in (12, 13):
            loss = loss * 1000.0
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss=loss)
        guard.step(loss)
    events = [json.loads(line) for line in (tmp_path / "monitor.jsonl").read_text().splitlines()]
    rollbacks = [e for rec in events for e in rec.get("events", []) if e["kind"] == "rollback"]
    assert rollbacks == [{"step": 13, "kind": "rollback", "restored_step": 9, "skip": [12, 13],
                          "discarded": [10, 13], "lr_scale": 1.0}]


def test_state_dict_round_trip():
    _, guard = run(40, bad=(20, 26), guard_kw={"every": 5, "patience": 2})
    model = nn.Linear(2, 1)
    other = RollbackGuard(model, torch.optim.SGD(model.parameters(), lr=0.1))
    other.load_state_dict(copy.deepcopy(guard.state_dict()))
    assert other.state_dict() == guard.state_dict() and other.rollbacks == guard.rollbacks
    with pytest.raises(ValueError, match="_version"):
        other.load_state_dict({"_version": 7})


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"every": 0}, ValueError, "every"),
        ({"patience": 0}, ValueError, "patience"),
        ({"keep": 0}, ValueError, "keep"),
        ({"patience": 1.5}, TypeError, "patience"),
        ({"lr_factor": 0.0}, ValueError, "lr_factor"),
        ({"lr_factor": 1.5}, ValueError, "lr_factor"),
        ({"scheduler": object()}, TypeError, "scheduler"),
        ({"clipper": 3}, TypeError, "clipper"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    model = nn.Linear(2, 1)
    with pytest.raises(error, match=match):
        RollbackGuard(model, torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)
    with pytest.raises(TypeError, match="optimizer"):
        RollbackGuard(model, None)


def test_rollback_restores_the_grad_scaler():
    x, y = make_data(30)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=1)
    guard = RollbackGuard(model, opt, every=2, patience=2, scaler=scaler,
                          detector=SpikeDetector(warmup=4))
    scales = {}
    event = None
    for t in range(30):
        xb, yb = x[t * 32 : (t + 1) * 32], y[t * 32 : (t + 1) * 32]
        if t >= 12:
            yb = yb * 30 + 10
        loss = ((model(xb) - yb) ** 2).mean()
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()  # growth_interval=1: the scale doubles at every finite step
        scales[t] = scaler.get_scale()
        event = guard.step(loss)
        if event is not None:
            break
    assert event is not None and scales[event.step] > scales[event.restored_step]
    assert scaler.get_scale() == scales[event.restored_step]
    assert scaler.state_dict()["_growth_tracker"] == 0


def test_rollback_refuses_a_scaler_of_the_wrong_type():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="scaler must be a torch.amp.GradScaler"):
        RollbackGuard(model, opt, scaler=object())
