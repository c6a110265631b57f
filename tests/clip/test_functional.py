"""clip_grad_norm_ / clip_grad_value_ / grad_norm: float64 references and parity with torch."""

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from traintech.clip import clip_grad_norm_, clip_grad_value_, grad_norm

from _helpers import assert_close_to_f64

SHAPES = [(7, 3), (11,), (2, 3, 4), (5000,)]
NORMS = [1.0, 2.0, 3.5, 0.5, math.inf]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _params(dtype, gen, shapes=SHAPES, scale=1.0):
    params = []
    for shape in shapes:
        p = torch.zeros(shape, dtype=dtype, requires_grad=True)
        p.grad = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
        params.append(p)
    return params


def _clone(params):
    out = []
    for p in params:
        q = p.detach().clone().requires_grad_(True)
        q.grad = None if p.grad is None else p.grad.clone()
        out.append(q)
    return out


def _ref_norm(grads, p):
    flat = torch.cat([g.detach().double().flatten() for g in grads])
    if math.isinf(p):
        return flat.abs().max()
    return flat.abs().pow(p).sum().pow(1.0 / p)


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_grad_norm_matches_float64_formula(p, dtype, seed):
    params = _params(dtype, seed)
    before = [q.grad.double().clone() for q in params]
    ref = _ref_norm(before, p)
    max_norm = 0.3 * float(ref)
    total = clip_grad_norm_(params, max_norm, norm_type=p)
    assert_close_to_f64(total, ref, dtype=torch.float32 if dtype != torch.float64 else dtype)
    coef = min(1.0, max_norm / (float(ref) + 1e-6))
    for q, g0 in zip(params, before, strict=True):
        assert_close_to_f64(q.grad, g0 * coef, dtype=dtype)


@pytest.mark.parametrize("p", [*NORMS, "inf", 0, -1.0, -math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("foreach", [None, True, False])
def test_parity_with_torch(p, dtype, foreach, seed):
    ours = _params(dtype, seed)
    theirs = _clone(ours)
    n_ours = clip_grad_norm_(ours, 1.5, norm_type=p, foreach=foreach)
    n_theirs = torch.nn.utils.clip_grad_norm_(theirs, 1.5, norm_type=p, foreach=foreach)
    assert n_ours.dtype == n_theirs.dtype
    rtol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(n_ours, n_theirs, rtol=rtol, atol=1e-7)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("kind", ["tensor", "list", "generator", "tuple"])
def test_accepts_what_torch_accepts(kind, seed):
    params = _params(torch.float32, seed)
    params.append(torch.zeros(3, requires_grad=True))  # grad None: ignored
    theirs = _clone(params)

    def wrap(ps):
        if kind == "tensor":
            return ps[0]
        if kind == "generator":
            return (q for q in ps)
        return tuple(ps) if kind == "tuple" else ps

    n1 = clip_grad_norm_(wrap(params), 0.5)
    n2 = torch.nn.utils.clip_grad_norm_(wrap(theirs), 0.5)
    torch.testing.assert_close(n1, n2, rtol=2e-5, atol=0)
    for a, b in zip(params, theirs, strict=True):
        if a.grad is None:
            assert b.grad is None
        else:
            torch.testing.assert_close(a.grad, b.grad, rtol=2e-5, atol=1e-8)


def test_empty_inputs_match_torch():
    for make in (list, tuple):
        assert torch.equal(
            clip_grad_norm_(make(), 1.0), torch.nn.utils.clip_grad_norm_(make(), 1.0)
        )
    no_grad = [torch.zeros(2, requires_grad=True)]
    assert float(clip_grad_norm_(no_grad, 1.0)) == 0.0
    assert float(grad_norm(no_grad)) == 0.0
    with pytest.warns(UserWarning, match="empty generator"):
        clip_grad_norm_((p for p in []), 1.0)


def test_errors_match_torch(seed):
    params = _params(torch.float32, seed)
    params[0].grad[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match="non-finite"):
        torch.nn.utils.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="could not convert"):
        clip_grad_norm_(params, "x")
    with pytest.raises(TypeError):
        clip_grad_norm_(params, 1.0, norm_type=None)
    with pytest.raises(ValueError, match="could not convert"):
        clip_grad_value_(params, "x")


def test_non_tensor_raises_type_error_that_torch_code_also_catches():
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(TypeError, match=r"parameters\[1\] is a int"):
        clip_grad_norm_([w, 3], 1.0)
    with pytest.raises(AttributeError):  # what torch raises for the same input
        clip_grad_norm_([w, 3], 1.0)
    with pytest.raises(TypeError, match="parameters"):
        clip_grad_value_([w, "a"], 1.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_behaves_like_torch(bad, seed):
    ours = _params(torch.float32, seed)
    ours[1].grad[3] = bad
    theirs = _clone(ours)
    n1 = clip_grad_norm_(ours, 1.0)
    n2 = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    torch.testing.assert_close(n1, n2, equal_nan=True)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, equal_nan=True)


def test_negative_max_norm_flips_like_torch():
    a = torch.zeros(2, requires_grad=True)
    a.grad = torch.tensor([3.0, 4.0])
    b = _clone([a])[0]
    clip_grad_norm_([a], -1.0)
    torch.nn.utils.clip_grad_norm_([b], -1.0)
    assert torch.equal(a.grad, b.grad)


def test_mixed_dtypes_promote_like_torch(seed):
    params = _params(torch.float32, seed) + _params(torch.float64, seed)
    theirs = _clone(params)
    n1 = clip_grad_norm_(params, 1.0)
    n2 = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert n1.dtype == n2.dtype == torch.float64
    torch.testing.assert_close(n1, n2, rtol=1e-6, atol=0)
    after = _ref_norm([q.grad for q in params], 2.0)  # the bound, since the norm was above it
    torch.testing.assert_close(after, torch.tensor(1.0, dtype=torch.float64), rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_norm_is_float32_and_does_not_overflow(dtype):
    w = torch.zeros(1000, dtype=dtype, requires_grad=True)
    w.grad = torch.full((1000,), 60000.0, dtype=dtype)
    entry = float(w.grad[0])  # 60000 rounded to dtype
    total = clip_grad_norm_([w], 1.0)
    assert total.dtype == torch.float32
    assert_close_to_f64(total, torch.tensor(entry * math.sqrt(1000)), dtype=torch.float32)
    assert_close_to_f64(grad_norm([w]), torch.tensor(1.0), dtype=dtype, rtol=1e-2)


def test_overflowing_float32_squares_are_recomputed_in_float64():
    w = torch.zeros(3, requires_grad=True)
    w.grad = torch.tensor([1e20, -1e20, 3e19])
    ref = _ref_norm([w.grad], 2.0)
    assert_close_to_f64(grad_norm([w]), ref, dtype=torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("p", [2.0, 1.0, 3.0])
def test_accuracy_on_20m_elements(p):
    g = torch.randn(20_000_000, generator=torch.Generator().manual_seed(3)) + 0.5
    ref = g.double().abs().pow(p).sum().pow(1.0 / p)
    w = torch.zeros(g.shape, requires_grad=True)
    w.grad = g
    rel = abs(float(grad_norm([w], p)) - float(ref)) / float(ref)
    assert rel <= (1e-6 if p == 2.0 else 1e-5)


def test_grad_norm_leaves_gradients_untouched(seed):
    params = _params(torch.float32, seed)
    before = [q.grad.clone() for q in params]
    for p in NORMS:
        assert_close_to_f64(grad_norm(params, p), _ref_norm(before, p), dtype=torch.float32)
    assert all(torch.equal(q.grad, b) for q, b in zip(params, before, strict=True))


def test_unclipped_gradients_are_bit_identical(seed):
    params = _params(torch.float32, seed)
    before = [q.grad.clone() for q in params]
    clip_grad_norm_(params, 1e9)
    assert all(torch.equal(q.grad, b) for q, b in zip(params, before, strict=True))


@pytest.mark.parametrize("clip_value", [0.5, 0.0, -0.5])
@pytest.mark.parametrize("foreach", [None, True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_clip_grad_value_matches_torch_and_formula(clip_value, foreach, dtype, seed):
    ours = _params(dtype, seed, shapes=[*SHAPES, (70_000,)])
    theirs = _clone(ours)
    before = [q.grad.double().clone() for q in ours]
    clip_grad_value_(ours, clip_value, foreach=foreach)
    torch.nn.utils.clip_grad_value_(theirs, clip_value, foreach=foreach)
    for a, b, g0 in zip(ours, theirs, before, strict=True):
        assert torch.equal(a.grad, b.grad)
        if clip_value >= 0:
            assert_close_to_f64(a.grad, g0.clamp(-clip_value, clip_value), dtype=dtype)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=40),
    split=st.integers(0, 40),
    max_norm=st.floats(1e-3, 1e3),
    p=st.sampled_from([1.0, 2.0, 3.0, math.inf]),
)
def test_property_clipped_norm_within_bound_and_direction_kept(values, split, max_norm, p):
    flat = torch.tensor(values, dtype=torch.float64)
    parts = [flat[:split], flat[split:]]
    params = []
    for part in parts:
        w = torch.zeros(part.shape, dtype=torch.float64, requires_grad=True)
        w.grad = part.clone()
        params.append(w)
    before = float(clip_grad_norm_(params, max_norm, norm_type=p))
    after_flat = torch.cat([q.grad for q in params])
    after = float(_ref_norm([after_flat], p))
    assert after <= max_norm * (1 + 1e-9) + 1e-12
    if before > 0:
        coef = min(1.0, max_norm / (before + 1e-6))
        torch.testing.assert_close(after_flat, flat * coef, rtol=1e-12, atol=1e-300)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert float(grad_norm(params, p)) == pytest.approx(after, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("foreach", [True, None, False])
def test_device_without_foreach_support_behaves_like_torch(foreach):
    def make():
        p = torch.zeros(3, device="meta", requires_grad=True)
        p.grad = torch.ones(3, device="meta")
        return [p]

    if foreach:
        with pytest.raises(RuntimeError, match="foreach=True was passed"):
            clip_grad_norm_(make(), 1.0, foreach=foreach)
        with pytest.raises(RuntimeError, match="foreach=True was passed"):
            clip_grad_value_(make(), 1.0, foreach=foreach)
    else:
        out = clip_grad_norm_(make(), 1.0, foreach=foreach)
        assert out.device.type == "meta" and out.dtype == torch.float32


def test_complex_gradients_match_torch():
    p = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    p.grad = torch.tensor([3 + 4j, 1j, 2], dtype=torch.complex64)
    q = p.detach().clone().requires_grad_(True)
    q.grad = p.grad.clone()
    n1, n2 = clip_grad_norm_([p], 1.0), torch.nn.utils.clip_grad_norm_([q], 1.0)
    torch.testing.assert_close(n1, n2)
    torch.testing.assert_close(n1, torch.tensor(math.sqrt(30.0)))
    torch.testing.assert_close(p.grad, q.grad)
