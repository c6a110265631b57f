"""GuardedScaler: timm's NativeScaler signature backed by the guarded step."""

import math

import pytest
import torch

from traintech.clip import ZClip
from traintech.integrations import GuardedScaler


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _batches(n):
    gen = torch.Generator().manual_seed(5)
    return [torch.randn(4, 6, generator=gen) for _ in range(n)]


def _train(model, opt, scaler, batches, nan_at=None, **call):
    for i, x in enumerate(batches):
        loss = model(x).pow(2).mean()
        if i == nan_at:
            loss = loss * math.nan
        scaler(loss, opt, parameters=model.parameters(), **call)
        opt.zero_grad()


@pytest.mark.parametrize("mode, clip_grad", [("norm", 0.1), ("value", 0.01), ("agc", 0.01),
                                             ("zclip", None), ("ema", 2.0), ("quantile", None)])
def test_nan_step_is_skipped_in_every_mode(mode, clip_grad):
    model, opt = _setup()
    scaler = GuardedScaler(device="cpu", enabled=False)
    _train(model, opt, scaler, _batches(6), nan_at=3, clip_grad=clip_grad, clip_mode=mode)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert (scaler.steps_taken, scaler.steps_skipped) == (5, 1)


def test_norm_mode_matches_torch_clip_grad_norm():
    model, opt = _setup()
    ref_model, ref_opt = _setup()
    scaler = GuardedScaler(device="cpu", enabled=False)
    for x in _batches(4):
        scaler(model(x).pow(2).mean(), opt, clip_grad=0.05, parameters=model.parameters())
        opt.zero_grad()
        ref_model(x).pow(2).mean().backward()
        torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 0.05)
        ref_opt.step()
        ref_opt.zero_grad()
    for a, b in zip(model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_need_update_false_only_accumulates():
    model, opt = _setup()
    scaler = GuardedScaler(device="cpu", enabled=False)
    before = [p.detach().clone() for p in model.parameters()]
    scaler(model(_batches(1)[0]).sum(), opt, clip_grad=1.0, need_update=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert scaler.steps_taken == 0 and model[0].weight.grad is not None


def test_fp16_grad_scaler_path_unscales_before_clipping():
    model, opt = _setup()
    scaler = GuardedScaler(device="cpu", enabled=True)
    x = _batches(1)[0]
    scaler(model(x).pow(2).mean(), opt, clip_grad=1e9, parameters=model.parameters())
    ref_model, _ = _setup()
    ref_model(x).pow(2).mean().backward()
    ref = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ref_model.parameters()]))
    torch.testing.assert_close(scaler.last_report.norm, ref, rtol=1e-5, atol=0)


def test_state_dict_resumes_bit_identical():
    batches = _batches(10)
    model, opt = _setup()
    scaler = GuardedScaler(ZClip(warmup_steps=3), device="cpu", enabled=False)
    _train(model, opt, scaler, batches, clip_mode="zclip")

    half, half_opt = _setup()
    first = GuardedScaler(ZClip(warmup_steps=3), device="cpu", enabled=False)
    _train(half, half_opt, first, batches[:5], clip_mode="zclip")
    saved = {first.state_dict_key: first.state_dict(), "opt": half_opt.state_dict()}
    second = GuardedScaler(ZClip(warmup_steps=3), device="cpu", enabled=False)
    second.load_state_dict(saved["amp_scaler"])
    _train(half, half_opt, second, batches[5:], clip_mode="zclip")
    for a, b in zip(model.parameters(), half.parameters(), strict=True):
        assert torch.equal(a, b)
    assert scaler.guard.clipper.mean.item() > 0
    assert torch.equal(scaler.guard.clipper.mean, second.guard.clipper.mean)
    assert scaler.guard.steps_taken == second.guard.steps_taken == 10
    a, b = scaler.guard.clipper.state_dict(), second.guard.clipper.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))


def test_fixed_clipper_and_bad_arguments():
    model, opt = _setup()
    clipper = ZClip(warmup_steps=2)
    scaler = GuardedScaler(clipper, device="cpu", enabled=False)
    _train(model, opt, scaler, _batches(3), clip_grad=5.0, clip_mode="norm")
    assert scaler.guard.clipper is clipper
    with pytest.raises(ValueError, match="clip_mode \\('l2'\\) must be one of"):
        scaler(model(_batches(1)[0]).sum(), opt, clip_mode="l2")
    with pytest.raises(ValueError, match="clip_grad \\(-1.0\\) must be None or a number > 0"):
        scaler(model(_batches(1)[0]).sum(), opt, clip_grad=-1.0)
    with pytest.raises(TypeError, match="clipper must be a traintech.clip.Clipper"):
        GuardedScaler("norm")
    with pytest.raises(ValueError, match="_version"):
        scaler.load_state_dict({"_version": 0})
