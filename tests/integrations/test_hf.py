"""TraintechCallback and GuardedOptimizer inside a real transformers.Trainer (CPU, offline)."""

import math

import pytest
import torch

from traintech.clip import GuardedOptimizer, NormClip, ZClip

from ._tiny import assert_all_finite, assert_same_params, params_of, tiny_gpt2, token_batches

transformers = pytest.importorskip("transformers")
from traintech.integrations.hf import STATE_FILE, TraintechCallback  # noqa: E402


class _NaNAt(transformers.TrainerCallback):
    """Put a NaN into one gradient just before the optimizer step of ``step``."""

    def __init__(self, step):
        self.step = step

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            model.lm_head.weight.grad[0, 0] = math.nan


def _data(n):
    return [{"input_ids": x, "labels": x} for x in token_batches(n * 2, seed=3)
            for x in x.unbind(0)][: n * 2]


def _trainer(tmp_path, model, callbacks, steps, optimizers=(None, None), **kwargs):
    args = dict(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=2,
                learning_rate=1e-3, max_grad_norm=0.0, logging_steps=1, save_strategy="no",
                report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    args.update(kwargs)
    accumulation = args.get("gradient_accumulation_steps", 1)
    return transformers.Trainer(
        model=model, args=transformers.TrainingArguments(**args),
        train_dataset=_data(steps * accumulation), callbacks=callbacks, optimizers=optimizers,
    )


def test_nan_gradient_is_skipped_counted_and_monitored(tmp_path):
    model = tiny_gpt2()
    callback = TraintechCallback(NormClip(1.0))
    trainer = _trainer(tmp_path, model, [_NaNAt(2), callback], steps=5)
    trainer.train()
    assert_all_finite(model)
    assert (callback.steps_applied, callback.steps_skipped) == (4, 1)
    skips = [r["clip"]["skip"] for r in callback.monitor.history]
    assert skips == [False, False, True, False, False]
    logged = [h for h in trainer.state.log_history if "monitor/loss" in h]
    assert [h["traintech/skipped_total"] for h in logged] == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert [h["monitor/clip/skip"] for h in logged] == [0.0, 0.0, 1.0, 0.0, 0.0]


def test_skipped_step_holds_the_scheduler(tmp_path):
    model = tiny_gpt2()
    callback = TraintechCallback(None, monitor=False)
    trainer = _trainer(tmp_path, model, [_NaNAt(1), callback], steps=3,
                       lr_scheduler_type="linear")
    trainer.train()
    # 3 optimizer steps, one skipped: the scheduler stepped twice.
    assert trainer.lr_scheduler.last_epoch == 2


def test_accumulation_gives_one_norm_per_optimizer_step(tmp_path):
    clipper = ZClip(warmup_steps=1)
    callback = TraintechCallback(clipper)
    _trainer(tmp_path, tiny_gpt2(), [callback], steps=2, gradient_accumulation_steps=4).train()
    assert int(clipper.state_dict()["count"]) == 2
    assert callback.monitor.step_count == 2


def test_bf16_autocast_trains_and_clips(tmp_path):
    model = tiny_gpt2()
    callback = TraintechCallback(NormClip(0.5))
    _trainer(tmp_path, model, [callback], steps=2, bf16=True).train()
    assert callback.steps_applied == 2
    assert callback.guard.last_report.coef.item() < 1.0
    assert_all_finite(model)


def test_resume_from_checkpoint_is_bit_identical(tmp_path):
    straight_model, straight = tiny_gpt2(), TraintechCallback(ZClip(warmup_steps=2))
    _trainer(tmp_path, straight_model, [straight], steps=6, save_strategy="steps",
             save_steps=3).train()
    assert (tmp_path / "checkpoint-3" / STATE_FILE).is_file()
    expected = params_of(straight_model)
    expected_state = straight.state_dict()

    resumed_model, resumed = tiny_gpt2(), TraintechCallback(ZClip(warmup_steps=2))
    _trainer(tmp_path, resumed_model, [resumed], steps=6, save_strategy="steps",
             save_steps=3).train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    assert_same_params(expected, params_of(resumed_model))
    state = resumed.state_dict()
    assert state["guard"]["steps_applied"] == expected_state["guard"]["steps_applied"] == 6
    for key, value in expected_state["guard"]["guard"]["clipper"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, state["guard"]["guard"]["clipper"][key]), key
    assert state["monitor"]["history"] == expected_state["monitor"]["history"]


def test_resume_without_saved_state_warns(tmp_path):
    _trainer(tmp_path / "a", tiny_gpt2(), [TraintechCallback(NormClip(1.0))], steps=2,
             save_strategy="steps", save_steps=2).train()
    (tmp_path / "a" / "checkpoint-2" / STATE_FILE).unlink()
    callback = TraintechCallback(NormClip(1.0))
    trainer = _trainer(tmp_path / "a", tiny_gpt2(), [callback], steps=3)
    with pytest.warns(UserWarning, match="resumed at step 2 but no traintech.pt was found"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert callback.steps_applied == 1


def test_max_grad_norm_is_refused(tmp_path):
    with pytest.raises(ValueError, match="max_grad_norm=1.0"):
        _trainer(tmp_path, tiny_gpt2(), [TraintechCallback(NormClip(1.0))], steps=1,
                 max_grad_norm=1.0)


def test_guarded_optimizer_route(tmp_path):
    model = tiny_gpt2()
    opt = GuardedOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), ZClip(warmup_steps=2))
    trainer = _trainer(tmp_path, model, [_NaNAt(2)], steps=4, optimizers=(opt, None),
                       save_strategy="steps", save_steps=4)
    trainer.train()
    assert_all_finite(model)
    assert (opt.steps_taken, opt.steps_skipped) == (3, 1)
    saved = torch.load(tmp_path / "checkpoint-4" / "optimizer.pt", weights_only=False)
    assert saved["traintech_guard"]["skipped"] == 1


def test_guarded_optimizer_through_create_optimizer(tmp_path):
    class GuardedTrainer(transformers.Trainer):
        def create_optimizer(self, model=None):
            self.optimizer = GuardedOptimizer(super().create_optimizer(model), NormClip(1.0))
            return self.optimizer

    model = tiny_gpt2()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, max_grad_norm=0.0,
        save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = GuardedTrainer(model=model, args=args, train_dataset=_data(3), callbacks=[_NaNAt(1)])
    trainer.train()
    guarded = trainer.optimizer.optimizer  # inside accelerate's AcceleratedOptimizer
    assert isinstance(guarded, GuardedOptimizer)
    assert (guarded.steps_taken, guarded.steps_skipped) == (2, 1)
    assert_all_finite(model)
