"""What every adaptive clipper must do: resume bit for bit, ignore NaN/Inf, reject bad settings."""

import io
import math

import pytest
import torch

from traintech.clip import AGC, EMAClip, QuantileClip, ZClip

FACTORIES = {
    "ema": lambda: EMAClip(factor=1.5, beta=0.9, warmup_steps=5),
    "ema-skip": lambda: EMAClip(warmup_steps=3, skip_factor=2.0),
    "quantile": lambda: QuantileClip(quantile=0.7, window=40),
    "quantile-skip": lambda: QuantileClip(quantile=0.5, window=7, skip_factor=1.5),
    "zclip": lambda: ZClip(warmup_steps=5),
    "zclip-pct-cap": lambda: ZClip(warmup_steps=4, mode="percentile", max_grad_norm=2.0),
    "zclip-mean-skip": lambda: ZClip(
        warmup_steps=6, clip_option="mean", skip_update_on_spike=True, skip_factor=1.0
    ),
}


def _norms(steps: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    norms = torch.exp(0.3 * torch.randn(steps, generator=gen))
    spikes = torch.rand(steps, generator=gen) < 0.1
    return torch.where(spikes, norms * 20, norms).float()


def _outcome(result):
    return (result.norm.item(), result.coef.item(), result.threshold.item(), bool(result.skip))


def _states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if isinstance(sa[key], torch.Tensor):
            assert torch.equal(sa[key], sb[key]), key
        else:
            assert sa[key] == sb[key], key


@pytest.mark.parametrize("name", FACTORIES)
def test_state_dict_resumes_bit_for_bit(name):
    norms = _norms(400)
    original = FACTORIES[name]()
    for x in norms[:170]:
        original.decide(x)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    resumed = FACTORIES[name]()
    resumed.load_state_dict(torch.load(buffer))
    for x in norms[170:]:
        assert _outcome(resumed.decide(x)) == _outcome(original.decide(x))
    _states_equal(original, resumed)


@pytest.mark.parametrize("name", FACTORIES)
def test_state_dict_is_a_copy(name):
    clipper = FACTORIES[name]()
    clipper.decide(torch.tensor(1.0))
    saved = clipper.state_dict()
    before = {k: v.clone() for k, v in saved.items() if isinstance(v, torch.Tensor)}
    for x in _norms(30):
        clipper.decide(x)
    assert all(torch.equal(saved[k], v) for k, v in before.items())


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", [[0], [2, 3], [12, 40, 41, 42]])
def test_nonfinite_norm_never_enters_the_statistics(name, bad, where):
    norms = _norms(60, seed=5)
    clean, dirty = FACTORIES[name](), FACTORIES[name]()
    clean_out = [_outcome(clean.decide(x)) for x in norms]
    dirty_out = []
    for step, x in enumerate(norms):
        for _ in range(where.count(step)):
            result = dirty.decide(torch.tensor(bad))
            assert result.coef.item() == 1.0 and bool(result.skip)
        dirty_out.append(_outcome(dirty.decide(x)))
    assert dirty_out == clean_out
    _states_equal(clean, dirty)


@pytest.mark.parametrize("name", FACTORIES)
def test_call_with_nan_gradient_leaves_state_and_other_gradients(name):
    clipper = FACTORIES[name]()
    w = torch.zeros(3, requires_grad=True)
    for x in _norms(20):
        w.grad = torch.tensor([x.item(), 0.0, 0.0])
        clipper([w])
    before = clipper.state_dict()
    w.grad = torch.tensor([math.nan, 1.0, 2.0])
    result = clipper([w])
    assert math.isnan(result.norm.item()) and result.coef.item() == 1.0 and bool(result.skip)
    assert w.grad[1:].tolist() == [1.0, 2.0]
    after = clipper.state_dict()
    assert all(
        torch.equal(v, after[k]) if isinstance(v, torch.Tensor) else v == after[k]
        for k, v in before.items()
    )


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_clipped_gradient_has_the_threshold_norm(name, dtype):
    clipper = FACTORIES[name]()
    w = torch.zeros(4, 3, dtype=dtype, requires_grad=True)
    gen = torch.Generator().manual_seed(1)
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2}.get(dtype, 1e-6)
    clipped = 0
    for x in _norms(60, seed=2):
        raw = torch.randn(4, 3, generator=gen, dtype=torch.float64)
        raw = raw / raw.norm() * x.double()
        w.grad = raw.to(dtype)
        before = w.grad.double().clone()
        result = clipper([w])
        assert result.coef.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        torch.testing.assert_close(
            w.grad.double(), before * result.coef.item(), rtol=tol, atol=0
        )
        if result.coef.item() < 1:
            clipped += 1
            torch.testing.assert_close(
                w.grad.double().norm().item(), result.threshold.item(), rtol=2 * tol, atol=0
            )
    assert clipped > 0


INVALID = [
    (EMAClip, dict(factor=0.0), "factor"),
    (EMAClip, dict(factor=-1.0), "factor"),
    (EMAClip, dict(factor=math.nan), "factor"),
    (EMAClip, dict(beta=1.0), "beta"),
    (EMAClip, dict(beta=-0.1), "beta"),
    (EMAClip, dict(warmup_steps=0), "warmup_steps"),
    (EMAClip, dict(skip_factor=0.5), "skip_factor"),
    (QuantileClip, dict(quantile=1.5), "quantile"),
    (QuantileClip, dict(quantile=-0.01), "quantile"),
    (QuantileClip, dict(window=0), "window"),
    (QuantileClip, dict(skip_factor=math.inf), "skip_factor"),
    (ZClip, dict(alpha=0.0), "alpha"),
    (ZClip, dict(alpha=1.0), "alpha"),
    (ZClip, dict(z_thresh=0.0), "z_thresh"),
    (ZClip, dict(max_grad_norm=-1.0), "max_grad_norm"),
    (ZClip, dict(warmup_steps=0), "warmup_steps"),
    (ZClip, dict(mode="median"), "mode"),
    (ZClip, dict(clip_option="max"), "clip_option"),
    (ZClip, dict(clip_factor=0.0), "clip_factor"),
    (ZClip, dict(eps=-1e-6), "eps"),
    (AGC, dict(clip_factor=0.0), "clip_factor"),
    (AGC, dict(clip_factor=-0.01), "clip_factor"),
    (AGC, dict(eps=-1e-3), "eps"),
]


@pytest.mark.parametrize("cls, kwargs, argument", INVALID, ids=lambda v: str(v))
def test_invalid_settings_raise_value_error_naming_the_argument(cls, kwargs, argument):
    with pytest.raises(ValueError, match=rf"^{argument} .*{kwargs[argument]}"):
        cls(**kwargs)


@pytest.mark.parametrize(
    "cls, kwargs, argument",
    [
        (EMAClip, dict(factor="2"), "factor"),
        (QuantileClip, dict(window=10.0), "window"),
        (ZClip, dict(warmup_steps=2.5), "warmup_steps"),
        (ZClip, dict(skip_update_on_spike=1), "skip_update_on_spike"),
        (AGC, dict(exclude=[3]), "exclude"),
    ],
)
def test_wrong_types_raise_type_error(cls, kwargs, argument):
    with pytest.raises(TypeError, match=argument):
        cls(**kwargs)


@pytest.mark.parametrize("name", FACTORIES)
def test_load_rejects_other_settings_and_version_without_changing_state(name):
    clipper = FACTORIES[name]()
    for x in _norms(10):
        clipper.decide(x)
    good = clipper.state_dict()
    other = dict(good, settings=dict(good["settings"], skip_factor=7.0))
    with pytest.raises(ValueError, match="skip_factor"):
        clipper.load_state_dict(other)
    with pytest.raises(ValueError, match="_version"):
        clipper.load_state_dict(dict(good, _version=99))
    first_tensor = next(k for k, v in good.items() if isinstance(v, torch.Tensor))
    with pytest.raises(ValueError, match=first_tensor):
        clipper.load_state_dict({k: v for k, v in good.items() if k != first_tensor})
    after = clipper.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in good.items() if isinstance(v, torch.Tensor))


def test_mode_and_option_are_case_insensitive_like_the_package():
    clipper = ZClip(mode="ZScore", clip_option="Mean")
    assert (clipper.mode, clipper.clip_option) == ("zscore", "mean")
    assert ZClip(mode="percentile", clip_option=None).mode == "percentile"
    with pytest.raises(ValueError, match="clip_option"):
        ZClip(mode="zscore", clip_option=None)


@pytest.mark.parametrize("name", FACTORIES)
def test_decide_never_reads_a_tensor_value_on_the_host(name):
    """On the meta device any .item()/bool() raises: passing there proves no host sync."""
    clipper = FACTORIES[name]()
    for _ in range(2):
        result = clipper.decide(torch.tensor(1.0, device="meta"))
    assert result.coef.device.type == "meta" and result.skip.dtype == torch.bool
    assert all(v.device.type == "meta" for v in clipper._state.values())


def test_agc_never_reads_a_tensor_value_on_the_host():
    w = torch.zeros(3, 4, device="meta", requires_grad=True)
    b = torch.zeros(4, device="meta", requires_grad=True)
    w.grad, b.grad = torch.zeros_like(w), torch.zeros_like(b)
    assert AGC()([w, b]).coef.device.type == "meta"


def test_repr_shows_the_settings():
    assert repr(EMAClip(factor=3.0)) == (
        "EMAClip(factor=3.0, beta=0.98, warmup_steps=25, skip_factor=None)"
    )
    assert repr(ZClip()).startswith("ZClip(alpha=0.97, z_thresh=2.5, max_grad_norm=1.0,")
    assert repr(AGC(exclude="fc.*")) == "AGC(clip_factor=0.01, eps=0.001, exclude=('fc.*',))"
