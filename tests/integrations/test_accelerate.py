"""The accelerate recipe: GuardedStep on the AcceleratedOptimizer, for real (CPU, offline)."""

import math

import pytest
import torch

from traintech.clip import GuardedStep, NormClip, ZClip
from traintech.integrations import accelerate_sink
from traintech.monitor import Monitor

from ._tiny import assert_all_finite, assert_same_params, params_of, tiny_gpt2, token_batches

accelerate = pytest.importorskip("accelerate")
from accelerate.state import AcceleratorState, GradientState  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_state():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _run(batches, *, clipper, mp="no", accumulation=1, nan_at=None, fp16_scaler=False,
         save_to=None, save_after=None, load_from=None, project_dir=None):
    """The documented recipe; returns (model, guard, monitor, accelerator, skipped flags)."""
    accelerator = accelerate.Accelerator(cpu=True, mixed_precision=mp,
                                         gradient_accumulation_steps=accumulation)
    if fp16_scaler:  # accelerate has no fp16 on CPU: give it the scaler it makes on a GPU
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    model = tiny_gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    model, opt, sched = accelerator.prepare(model, opt, sched)
    # -- the recipe: 4 lines (guard, register, monitor, and guard.step() for opt.step()) --
    guard = GuardedStep(opt, clipper)
    accelerator.register_for_checkpointing(guard)
    monitor = Monitor(model, opt, sink=accelerate_sink(accelerator), update_every=None)
    accelerator.register_for_checkpointing(monitor)
    if load_from is not None:
        accelerator.load_state(load_from)
    skipped, optimizer_steps = [], 0
    start = 0 if load_from is None else save_after * accumulation
    for i, batch in enumerate(batches[start:], start=start):
        with accelerator.accumulate(model):
            with torch.autocast("cpu", dtype=torch.float16, enabled=fp16_scaler):
                loss = model(input_ids=batch, labels=batch).loss
            accelerator.backward(loss)
            if nan_at is not None and i == nan_at:
                model.lm_head.weight.grad[0, 0] = math.nan
            report = guard.step()
            if report.synced:
                monitor.step(loss=loss, clip=report.clip)
                skipped.append(accelerator.optimizer_step_was_skipped)
                optimizer_steps += 1
            sched.step()
            opt.zero_grad()
        if save_to is not None and (i + 1) == save_after * accumulation:
            accelerator.save_state(save_to)
    return model, guard, monitor, sched, skipped


def test_nan_is_skipped_and_the_scheduler_holds():
    model, guard, monitor, sched, skipped = _run(token_batches(5), clipper=NormClip(1.0),
                                                 nan_at=2)
    assert_all_finite(model)
    assert (guard.steps_taken, guard.steps_skipped) == (4, 1)
    assert skipped == [False, False, True, False, False]
    assert sched.scheduler.last_epoch == 4  # 5 steps, one held
    assert monitor.history[2]["events"][0]["kind"] == "nonfinite"


def test_accumulate_gives_one_norm_per_optimizer_step():
    clipper = ZClip(warmup_steps=1)
    model, guard, monitor, _, skipped = _run(token_batches(8), clipper=clipper, accumulation=4,
                                             mp="bf16")
    assert int(clipper.state_dict()["count"]) == 2 == guard.steps_taken == len(skipped)
    assert monitor.step_count == 2


def test_fp16_scaler_of_the_wrapper_is_used():
    model, guard, _, _, skipped = _run(token_batches(4), clipper=NormClip(1.0), nan_at=1,
                                       fp16_scaler=True)
    assert guard.scaler is not None
    assert_all_finite(model)
    assert guard.steps_skipped >= 1 and skipped[1]
    assert guard.scaler.get_scale() < 2.0**10  # the inf made the scaler back off


def test_register_for_checkpointing_resumes_bit_identical(tmp_path):
    batches = token_batches(6)
    straight, guard_a, mon_a, _, _ = _run(batches, clipper=ZClip(warmup_steps=2))
    _run(batches, clipper=ZClip(warmup_steps=2), save_to=tmp_path / "s", save_after=3)
    resumed, guard_b, mon_b, _, _ = _run(batches, clipper=ZClip(warmup_steps=2),
                                         load_from=tmp_path / "s", save_after=3)
    assert_same_params(params_of(straight), params_of(resumed))
    a, b = guard_a.state_dict(), guard_b.state_dict()
    assert a["calls"] == b["calls"] == 6
    for key, value in a["clipper"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b["clipper"][key]), key
    assert list(mon_a.history) == list(mon_b.history)


def test_monitor_accepts_the_accelerated_optimizer():
    accelerator = accelerate.Accelerator(cpu=True)
    model = torch.nn.Linear(3, 1)
    opt = accelerator.prepare(torch.optim.SGD(model.parameters(), lr=0.1))
    monitor = Monitor(model, opt, update_every=1)
    assert monitor.optimizer is opt.optimizer
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    record = monitor.step()
    assert record["update_ratio"]["weight"] > 0
