"""TraintechCallback inside a real Lightning Trainer on a tiny GPT-2 (CPU, offline)."""

import math

import pytest
import torch

from traintech.clip import NormClip, ZClip

from ._tiny import assert_all_finite, assert_same_params, params_of, tiny_gpt2, token_batches

L = pytest.importorskip("lightning.pytorch")
from traintech.integrations.lightning import TraintechCallback  # noqa: E402


class _LM(L.LightningModule):
    def __init__(self, nan_at: int | None = None, fused: bool = False) -> None:
        super().__init__()
        self.model = tiny_gpt2()
        self.nan_at = nan_at
        self.fused = fused

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch, labels=batch).loss

    def on_after_backward(self) -> None:
        if self.nan_at is not None and self.trainer.fit_loop.total_batch_idx == self.nan_at:
            self.model.lm_head.weight.grad[0, 0] = math.nan

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3, fused=self.fused or None)


def _trainer(callback, **kwargs):
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, max_epochs=1)
    defaults.update(kwargs)
    return L.Trainer(callbacks=[callback], **defaults)


def _loader(n=4):
    return torch.utils.data.DataLoader(token_batches(n), batch_size=None)


def test_nan_gradient_is_skipped_counted_and_monitored():
    module = _LM(nan_at=2)
    callback = TraintechCallback(NormClip(1.0), monitor={"update_every": None})
    _trainer(callback).fit(module, _loader(5))
    assert_all_finite(module)
    assert (callback.steps_applied, callback.steps_skipped) == (4, 1)
    assert callback.state_dict()["guard"]["steps_skipped"] == 1
    records = list(callback.monitor.history)
    assert [r["clip"]["skip"] for r in records] == [False, False, True, False, False]
    assert callback.monitor.step_count == 5


def test_accumulation_gives_one_norm_per_optimizer_step():
    clipper = ZClip(warmup_steps=2)
    callback = TraintechCallback(clipper, monitor=True)
    _trainer(callback, accumulate_grad_batches=4).fit(_LM(), _loader(8))
    assert callback.steps_applied == 2
    assert int(clipper.state_dict()["count"]) == 2
    assert callback.monitor.step_count == 2


def test_resume_from_checkpoint_is_bit_identical(tmp_path):
    def make():
        return _LM(), TraintechCallback(ZClip(warmup_steps=2), monitor={"update_every": 2})

    straight, cb_straight = make()
    _trainer(cb_straight, max_epochs=2).fit(straight, _loader())

    first, cb_first = make()
    trainer = _trainer(cb_first, max_epochs=1)
    trainer.fit(first, _loader())
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    resumed, cb_resumed = make()
    _trainer(cb_resumed, max_epochs=2).fit(resumed, _loader(), ckpt_path=tmp_path / "half.ckpt")

    assert_same_params(params_of(straight), params_of(resumed))
    a, b = cb_straight.state_dict(), cb_resumed.state_dict()
    assert a["guard"]["steps_applied"] == b["guard"]["steps_applied"] == 8
    for key, value in a["guard"]["guard"]["clipper"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b["guard"]["guard"]["clipper"][key]), key
    assert a["monitor"]["history"] == b["monitor"]["history"]
    assert a["monitor"]["step_count"] == b["monitor"]["step_count"] == 8


def test_bf16_autocast_trains_and_clips():
    module = _LM()
    callback = TraintechCallback(NormClip(0.5))
    _trainer(callback, precision="bf16-mixed").fit(module, _loader(3))
    assert callback.steps_applied == 3
    report = callback.guard.last_report
    assert report.norm.item() > 0.5 and report.coef.item() < 1.0
    assert_all_finite(module)


def test_fp16_fused_optimizer_is_unscaled_before_clipping():
    """Lightning does not unscale for fused optimizers; the callback must, or norms are x2**16."""
    torch.manual_seed(0)
    module = _LM(fused=True)
    callback = TraintechCallback(NormClip(1e9))
    plugin = L.plugins.MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer = _trainer(callback, plugins=[plugin])
    trainer.fit(module, _loader(2))
    norm = callback.guard.last_report.norm.item()
    assert trainer.precision_plugin.scaler.get_scale() >= 2.0**15
    assert callback.steps_applied == 2
    assert 0.1 < norm < 100.0  # the scaled norm would be about 65536 times larger
    assert_all_finite(module)


def test_gradient_clip_val_is_refused():
    callback = TraintechCallback(NormClip(1.0))
    with pytest.raises(ValueError, match="gradient_clip_val=1.0"):
        _trainer(callback, gradient_clip_val=1.0).fit(_LM(), _loader(1))


def test_bad_monitor_argument():
    with pytest.raises(TypeError, match="monitor must be None, True, a dict"):
        TraintechCallback(NormClip(1.0), monitor="yes")
