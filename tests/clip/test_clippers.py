"""NormClip and ValueClip: values against the formula, bad input, state round-trip."""

import math

import pytest
import torch

from traintech.clip import Clipper, NormClip, ValueClip

from _helpers import assert_close_to_f64

ALL_CLIPPERS = [
    lambda: NormClip(1.0),
    lambda: NormClip(0.5, norm_type=math.inf),
    lambda: ValueClip(0.1),
]


def _params(gen, dtype=torch.float32):
    out = []
    for shape in [(4, 3), (5,)]:
        w = torch.zeros(shape, dtype=dtype, requires_grad=True)
        w.grad = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) * 2
        out.append(w)
    return out


def _ref_norm(grads, p=2.0):
    flat = torch.cat([g.double().flatten() for g in grads])
    return flat.abs().max() if math.isinf(p) else flat.abs().pow(p).sum().pow(1 / p)


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_norm_clip_scales_to_the_bound(p, dtype, seed):
    params = _params(seed, dtype)
    before = [w.grad.double().clone() for w in params]
    ref = _ref_norm(before, p)
    result = NormClip(max_norm=0.25 * float(ref), norm_type=p)(params)
    coef = 0.25 * float(ref) / (float(ref) + 1e-6)
    acc = torch.float32 if dtype != torch.float64 else dtype
    assert_close_to_f64(result.norm, ref, dtype=acc)
    assert_close_to_f64(result.coef, torch.tensor(coef, dtype=torch.float64), dtype=acc)
    assert_close_to_f64(result.threshold, 0.25 * ref, dtype=acc)
    assert not bool(result.skip)
    for w, g0 in zip(params, before, strict=True):
        assert_close_to_f64(w.grad, g0 * coef, dtype=dtype)
    assert_close_to_f64(_ref_norm([w.grad for w in params], p), coef * ref, dtype=dtype)


def test_norm_clip_below_bound_is_identity(seed):
    params = _params(seed)
    before = [w.grad.clone() for w in params]
    result = NormClip(1e6)(params)
    assert float(result.coef) == 1.0
    assert all(torch.equal(w.grad, b) for w, b in zip(params, before, strict=True))


def test_value_clip_clamps_entries(seed):
    params = _params(seed)
    before = [w.grad.double().clone() for w in params]
    result = ValueClip(0.3)(params)
    assert_close_to_f64(result.norm, _ref_norm(before), dtype=torch.float32)
    assert float(result.threshold) == pytest.approx(0.3)
    after = [g0.clamp(-0.3, 0.3) for g0 in before]
    # coef: norm after the clamp over the norm before (1.0 only when nothing was clamped)
    assert_close_to_f64(result.coef, _ref_norm(after) / _ref_norm(before), dtype=torch.float32)
    assert float(result.coef) < 1.0
    for w, g0 in zip(params, after, strict=True):
        assert_close_to_f64(w.grad, g0, dtype=torch.float32)
    untouched = ValueClip(1e6)(params)
    assert float(untouched.coef) == 1.0


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda: NormClip(-1.0), ValueError, "max_norm"),
        (lambda: NormClip(float("nan")), ValueError, "max_norm"),
        (lambda: NormClip("1.0"), TypeError, "max_norm"),
        (lambda: NormClip(1.0, norm_type="inf"), TypeError, "norm_type"),
        (lambda: NormClip(1.0, norm_type=None), TypeError, "norm_type"),
        (lambda: NormClip(1.0, norm_type=0), ValueError, "norm_type"),
        (lambda: NormClip(1.0, norm_type=-2.0), ValueError, "norm_type"),
        (lambda: ValueClip(-0.1), ValueError, "clip_value"),
        (lambda: ValueClip(float("nan")), ValueError, "clip_value"),
        (lambda: ValueClip(None), TypeError, "clip_value"),
        (lambda: ValueClip(True), TypeError, "clip_value"),
    ],
)
def test_bad_settings_raise_naming_the_argument(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("make", ALL_CLIPPERS)
def test_empty_parameters_and_non_tensors_raise(make):
    clipper = make()
    with pytest.raises(ValueError, match="parameters"):
        clipper([])
    with pytest.raises(ValueError, match="parameters"):
        clipper([torch.zeros(2, requires_grad=True)])  # no .grad
    w = torch.zeros(2, requires_grad=True)
    w.grad = torch.ones(2)
    with pytest.raises(TypeError, match=r"parameters\[1\]"):
        clipper([w, 1.0])


@pytest.mark.parametrize("make", ALL_CLIPPERS)
def test_state_dict_round_trip_and_version(make, seed):
    clipper = make()
    assert isinstance(clipper, Clipper)
    sd = clipper.state_dict()
    assert sd["_version"] == 1
    other = make()
    other.load_state_dict(sd)
    assert other.state_dict() == sd
    a, b = _params(seed), _params(torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    ra, rb = clipper(a), other(b)
    assert torch.equal(ra.norm, rb.norm) and torch.equal(ra.coef, rb.coef)
    with pytest.raises(ValueError, match="_version"):
        other.load_state_dict({**sd, "_version": 99})


def test_scales_uniformly_flags():
    assert NormClip(1.0).scales_uniformly()
    assert not ValueClip(1.0).scales_uniformly()
    assert not NormClip(1.0).stateful and not ValueClip(1.0).stateful
