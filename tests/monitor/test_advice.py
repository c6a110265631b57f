"""No data is not healthy; runs in one folder; Monitor.step takes a GuardedStep report."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from _monitor_models import mlp, regression_data, train

from traintech.cli import main
from traintech.clip import ClipResult, GuardedStep, NormClip
from traintech.monitor import Monitor, diagnose, format_findings, read_log, read_runs


@pytest.fixture
def data():
    return regression_data(256, 6, torch.Generator().manual_seed(3))


def _run(tmp_path, data, steps=5, **kwargs):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = Monitor(model, opt, tmp_path, **kwargs)
    train(model, opt, mon, *data, steps)
    mon.close()
    return mon


# ----------------------------------------------------------------------------- no data
def test_a_monitor_that_logged_no_step_says_so():
    mon = Monitor(mlp(), None)
    (found,) = mon.findings()
    assert found.rule == "no_data" and found.severity == "error"
    assert "monitor.step" in found.message
    assert not mon.summary().startswith("No problems found")
    assert "no_data" in mon.summary()


def test_diagnose_of_nothing_is_no_data():
    assert [f.rule for f in diagnose([], {})] == ["no_data"]
    assert format_findings([]).startswith("No problems found")  # only when rules ran


@pytest.mark.parametrize("content", [None, "", "\n\n", "not json\n{broken\n", '{"meta": {}}\n'])
def test_report_on_a_missing_empty_or_corrupt_log_fails_with_one_line(tmp_path, capsys, content):
    if content is not None:
        (tmp_path / "monitor.jsonl").write_text(content)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reason is one stderr line, not a warning per line
        assert main(["report", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert err[-1].startswith("traintech report: no data:")
    assert len([line for line in err if "no data" in line]) == 1
    assert not (tmp_path / "report.html").exists()


def test_a_monitor_opened_and_closed_without_a_step_leaves_no_data(tmp_path, capsys):
    Monitor(mlp(), None, tmp_path).close()
    assert main(["report", str(tmp_path)]) == 1
    assert "no data" in capsys.readouterr().err


# ----------------------------------------------------------------------------- runs
def test_a_folder_that_holds_a_run_gets_a_new_run(tmp_path, data, capsys):
    first = _run(tmp_path, data, 4)
    second = _run(tmp_path, data, 6)
    assert (first.meta["run"], second.meta["run"]) == (1, 2)
    lines = [json.loads(x) for x in (tmp_path / "monitor.jsonl").read_text().splitlines()]
    assert all("run" in line for line in lines)  # a run id on every line
    runs = read_runs(tmp_path)
    assert sorted(runs) == [1, 2]
    assert [r["step"] for r in runs[1][1]] == list(range(4))
    assert [r["step"] for r in runs[2][1]] == list(range(6))
    assert read_log(tmp_path)[1] == runs[2][1]  # the last run by default
    assert read_log(tmp_path, run=1)[1] == list(first.history)
    with pytest.raises(ValueError, match=r"run=7 .*\[1, 2\]"):
        read_log(tmp_path, run=7)

    assert main(["report", str(tmp_path)]) == 0
    assert "run 2 of 2" in capsys.readouterr().out
    page = (tmp_path / "report.html").read_text()
    assert "Runs in this log (2" in page and "6 logged steps" in page
    assert main(["report", str(tmp_path), "--run", "1", "--out", str(tmp_path / "r1.html")]) == 0
    assert "4 logged steps" in (tmp_path / "r1.html").read_text()
    assert main(["report", str(tmp_path), "--run", "5"]) == 1
    assert "--run 5 is not in" in capsys.readouterr().err


def test_a_resumed_monitor_keeps_its_run_id(tmp_path, data):
    _run(tmp_path, data, 3)  # run 1, an earlier experiment
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = Monitor(model, opt, tmp_path)
    train(model, opt, mon, *data, 3)
    state = mon.state_dict()
    mon.close()
    again = Monitor(model, opt, tmp_path)
    again.load_state_dict(state)
    train(model, opt, again, *data, 3, start=3)
    again.close()
    runs = read_runs(tmp_path)
    assert sorted(runs) == [1, 2]
    assert [r["step"] for r in runs[2][1]] == list(range(6))


# ----------------------------------------------------------------------------- clip input
def test_step_accepts_what_guarded_step_returns(data):
    x, y = data
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = GuardedStep(opt, NormClip(1e-3))
    mon = Monitor(model, opt)
    for t in range(12):
        opt.zero_grad()
        loss = ((model(x[t * 16 : (t + 1) * 16]) - y[t * 16 : (t + 1) * 16]) ** 2).mean()
        loss.backward()
        report = guard.step()
        rec = mon.step(loss=loss, clip=report)
        assert rec["clip"]["norm"] == pytest.approx(float(report.norm))
        assert rec["clip"]["coef"] == pytest.approx(float(report.coef))
        assert rec["clip"]["threshold"] == pytest.approx(1e-3)
        assert rec["clip"]["skip"] is False and rec["clip"]["clipper"] == "NormClip"
    (found,) = [f for f in mon.findings() if f.rule == "clipping_saturated"]
    assert "NormClip's threshold" in found.message


def test_a_guarded_step_without_a_clipper_logs_an_infinite_threshold(data):
    x, y = data
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = Monitor(model, opt)
    opt.zero_grad()
    ((model(x[:8]) - y[:8]) ** 2).mean().backward()
    rec = mon.step(clip=GuardedStep(opt).step())
    assert rec["clip"]["threshold"] is None and rec["clip"]["coef"] == 1.0  # inf is logged null


@pytest.mark.parametrize("bad", [1.0, "clip", (1, 2)])
def test_step_refuses_other_clip_objects_before_counting(bad):
    mon = Monitor(mlp(), None)
    with pytest.raises(TypeError, match="clip must be a traintech.clip.ClipResult.*StepReport"):
        mon.step(clip=bad)
    assert mon.step_count == 0


def test_saturated_zclip_is_not_told_to_use_zclip():
    records = [
        {"step": t, "loss": 1.0, "grad_norm": 0.01,
         "clip": {"norm": 5.0, "coef": 0.2, "threshold": 1.0, "skip": False, "clipper": "ZClip"}}
        for t in range(20)
    ]
    (found,) = [f for f in diagnose(records, {}) if f.rule == "clipping_saturated"]
    assert "max_grad_norm" in found.message and "use an adaptive threshold" not in found.message
    assert "(ZClip, QuantileClip)" not in found.message and "use ZClip" not in found.message


def test_clip_result_input_still_works():
    model = torch.nn.Linear(2, 1)
    mon = Monitor(model, None)
    model(torch.ones(1, 2)).sum().backward()
    result = ClipResult(torch.tensor(2.0), torch.tensor(0.5), torch.tensor(1.0),
                        torch.tensor(False))
    rec = mon.step(clip=result)
    assert rec["clip"] == {"norm": 2.0, "coef": 0.5, "threshold": 1.0, "skip": False}


# ----------------------------------------------------------------------------- AMP mistakes
def _amp_step(model, opt, scaler, clipper, x, y, unscale_first):
    opt.zero_grad()
    scaler.scale(((model(x) - y) ** 2).mean()).backward()
    if unscale_first:
        scaler.unscale_(opt)
    result = clipper(model.parameters())
    scaler.step(opt)
    scaler.update()
    return result


@pytest.mark.parametrize("unscale_first", [False, True])
def test_a_clipper_that_measured_scaled_gradients_is_detected(data, unscale_first):
    x, y = data
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    mon = Monitor(model, opt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t in range(3):
            result = _amp_step(model, opt, scaler, NormClip(1.0), x[t * 16 : (t + 1) * 16],
                               y[t * 16 : (t + 1) * 16], unscale_first)
            mon.step(clip=result)
    scaled = [w for w in caught if "unscale_" in str(w.message)]
    if unscale_first:
        assert scaled == []
    else:
        assert len(scaled) == 1 and "1.02e+03x" in str(scaled[0].message)  # once, the scale


# ----------------------------------------------------------------------------- divergence rule
def _records(norms, losses):
    return [{"step": t, "grad_norm": n, "loss": v, "events": []}
            for t, (n, v) in enumerate(zip(norms, losses, strict=True))]


def test_sustained_norm_growth_without_a_loss_rise_is_exploding_but_not_diverging():
    norms = [1.0 * 2.0**t for t in range(12)]  # 2048x
    losses = [1.0 - 0.05 * t for t in range(12)]
    (found,) = [f for f in diagnose(_records(norms, losses), {}) if f.rule
                == "exploding_gradients"]
    assert "diverges" not in found.message and "Clip" in found.message
    assert found.evidence["growth"] >= 100


def test_a_loss_rise_with_a_norm_peak_is_seen_at_the_third_step():
    found = diagnose(_records([1.0, 30.0, 50.0], [2.0, 9.0, 40.0]), {})
    (f,) = [f for f in found if f.rule == "exploding_gradients"]
    assert "diverges" in f.message and f.evidence["loss_rise"] == pytest.approx(20.0)
    assert f.steps == (0, 2)


@pytest.mark.parametrize(
    ("norms", "losses"),
    [
        ([1.0, 1.2, 0.9, 1.1, 1.0, 0.8], [2.0, 1.5, 1.2, 1.0, 0.9, 0.8]),  # healthy
        ([1.0, 1.1, 1.2, 1.0, 1.1, 1.3], [1.0, 3.0, 5.0, 6.0, 7.0, 8.0]),  # loss rises, norm flat
        ([1.0, 50.0, 1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 0.9, 0.8, 0.8, 0.7]),  # one norm spike
    ],
)
def test_no_divergence_without_both_signs(norms, losses):
    assert "exploding_gradients" not in {f.rule for f in diagnose(_records(norms, losses), {})}


def test_a_log_from_before_run_ids_is_run_1_and_the_next_is_run_2(tmp_path, data):
    legacy = ['{"meta":{"model":"Old","params":{}}}', '{"step":0,"loss":1.0,"grad_norm":1.0}',
              '{"step":1,"loss":0.9,"grad_norm":1.0}']
    (tmp_path / "monitor.jsonl").write_text("\n".join(legacy) + "\n")
    mon = _run(tmp_path, data, 2)
    assert mon.meta["run"] == 2
    runs = read_runs(tmp_path)
    assert [r["step"] for r in runs[1][1]] == [0, 1] and runs[1][0]["model"] == "Old"
    assert [r["step"] for r in runs[2][1]] == [0, 1]
