"""Contract audit: the public API exactly as DESIGN.md and the issues write it.

Each test uses only the names and arguments the contract states, and compares to torch (or
the ``zclip`` package) where the contract says "drop-in" or "same as".
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import traintech
import traintech.clip as tclip
import traintech.dropout as tdrop
import traintech.init as tinit
import traintech.norm as tnorm
from traintech.monitor import Monitor

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _with_grads(model: nn.Module, scale: float = 1.0, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = (torch.randn(p.shape, generator=g) * scale).to(p.dtype)
    return model


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]


def _sd_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor):
            if not (isinstance(y, torch.Tensor) and torch.equal(x, y)):
                return False
        elif isinstance(x, dict):
            if not (isinstance(y, dict) and _sd_equal(x, y)):
                return False
        elif isinstance(x, list):
            if len(x) != len(y) or any(
                not (torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v)
                for u, v in zip(x, y, strict=False)
            ):
                return False
        elif x != y and not (isinstance(x, float) and math.isnan(x) and math.isnan(y)):
            return False
    return True


def _strip_path(text: str) -> str:
    return re.sub(r"^[\w.]*?(\w+)\(", r"\1(", text)


# --------------------------------------------------------------------------------------- clip
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 0.5, 3.0])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_clip_grad_norm_matches_torch(
    norm_type: float, max_norm: float, dtype: torch.dtype
) -> None:
    ours, ref = _with_grads(_model()), _with_grads(_model())
    for m in (ours, ref):
        m.to(dtype)
    total = tclip.clip_grad_norm_(ours.parameters(), max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm, norm_type)
    assert total.shape == expected.shape == ()
    # documented difference (docs/clip.md): fp16/bf16 norms are reduced and returned in float32
    # so that they cannot overflow; torch returns the gradients' dtype.
    low = dtype in (torch.float16, torch.bfloat16)
    assert total.dtype == (torch.float32 if low else expected.dtype)
    rtol = 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2
    torch.testing.assert_close(total.double(), expected.double(), rtol=rtol, atol=0)
    for a, b in zip(_grads(ours), _grads(ref), strict=False):
        torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=1e-6)


def test_clip_grad_norm_coefficient_formula() -> None:
    model = _with_grads(_model(), scale=3.0)
    before = _grads(model)
    total = tclip.clip_grad_norm_(model.parameters(), 1.0)
    ref_total = torch.cat([g.double().flatten() for g in before]).norm()
    coef = min(1.0, 1.0 / (ref_total.item() + 1e-6))
    assert total.item() == pytest.approx(ref_total.item(), rel=1e-6)
    for b, p in zip(before, model.parameters(), strict=False):
        torch.testing.assert_close(p.grad.double(), b.double() * coef, rtol=1e-6, atol=1e-7)


def test_clip_grad_norm_inputs_like_torch() -> None:
    # single tensor, generator, grad None, empty list
    t = torch.zeros(3, requires_grad=True)
    t.grad = torch.tensor([3.0, 4.0, 0.0])
    assert tclip.clip_grad_norm_(t, 1.0).item() == pytest.approx(5.0)
    p = nn.Parameter(torch.zeros(2))
    assert tclip.clip_grad_norm_((q for q in [p]), 1.0).item() == 0.0
    assert torch.equal(tclip.clip_grad_norm_([], 1.0), torch.nn.utils.clip_grad_norm_([], 1.0))
    bad = _with_grads(_model())
    next(bad.parameters()).grad[0, 0] = float("nan")  # type: ignore[index]
    with pytest.raises(RuntimeError):
        torch.nn.utils.clip_grad_norm_(bad.parameters(), 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError):
        tclip.clip_grad_norm_(bad.parameters(), 1.0, error_if_nonfinite=True)
    assert tclip.clip_grad_norm_(bad.parameters(), 1.0, foreach=False).isnan()


def test_clip_grad_value_and_grad_norm() -> None:
    ours, ref = _with_grads(_model()), _with_grads(_model())
    assert tclip.clip_grad_value_(ours.parameters(), 0.3) is None
    torch.nn.utils.clip_grad_value_(ref.parameters(), 0.3)
    for a, b in zip(_grads(ours), _grads(ref), strict=False):
        assert torch.equal(a, b)
    m = _with_grads(_model())
    before = _grads(m)
    n = tclip.grad_norm(m.parameters())
    n1 = tclip.grad_norm(m.parameters(), norm_type=1.0)
    assert n.shape == () and n1.shape == ()
    ref_n = torch.cat([g.double().flatten() for g in before]).norm()
    ref_n1 = torch.cat([g.double().flatten() for g in before]).abs().sum()
    assert n.item() == pytest.approx(ref_n.item(), rel=1e-6)
    assert n1.item() == pytest.approx(ref_n1.item(), rel=1e-6)
    for a, b in zip(before, _grads(m), strict=False):
        assert torch.equal(a, b)


def test_per_layer_clipping() -> None:
    m = _with_grads(_model(), scale=5.0)
    before = {n: p.grad.clone() for n, p in m.named_parameters()}  # type: ignore[union-attr]
    norms = tclip.clip_grad_norm_per_layer_(m.named_parameters(), 1.0)
    assert set(norms) == set(before)
    for name, p in m.named_parameters():
        ref = before[name].double().norm()
        assert norms[name].item() == pytest.approx(ref.item(), rel=1e-5)
        assert p.grad.double().norm().item() <= 1.0 + 1e-5  # type: ignore[union-attr]


def _clippers() -> list[tclip.Clipper]:
    return [
        tclip.NormClip(1.0),
        tclip.NormClip(1.0, norm_type=2.0),
        tclip.ValueClip(0.1),
        tclip.EMAClip(),
        tclip.QuantileClip(quantile=0.9, window=1000),
        tclip.QuantileClip(),
        tclip.ZClip(),
        tclip.AGC(clip_factor=0.01, eps=1e-3),
        tclip.AGC(),
    ]


@pytest.mark.parametrize("clipper", _clippers(), ids=lambda c: type(c).__name__)
def test_clipper_protocol(clipper: tclip.Clipper) -> None:
    model = _model()
    fresh = type(clipper).__new__(type(clipper))
    for step in range(40):
        _with_grads(model, scale=1.0 + 10.0 * (step == 35), seed=step)
        before = _grads(model)
        result = clipper(model.parameters())
        assert isinstance(result.norm, torch.Tensor) and result.norm.shape == ()
        assert isinstance(result.coef, torch.Tensor) and result.coef.shape == ()
        ref_norm = torch.cat([g.double().flatten() for g in before]).norm()
        assert result.norm.item() == pytest.approx(ref_norm.item(), rel=1e-5)
        after = torch.cat([p.grad.double().flatten() for p in model.parameters()]).norm()  # type: ignore[union-attr]
        # coef: 1.0 = untouched; for every clipper it is the norm ratio after / before
        assert result.coef.item() == pytest.approx((after / ref_norm).item(), rel=1e-5)
        if not isinstance(clipper, (tclip.ValueClip, tclip.AGC)):
            for b, p in zip(before, model.parameters(), strict=False):
                torch.testing.assert_close(
                    p.grad.double(), b.double() * result.coef.item(), rtol=1e-5, atol=1e-7
                )
        if step == 20:
            sd = clipper.state_dict()
    # resume from the step-20 checkpoint gives the same results
    del fresh
    import copy

    other = copy.deepcopy(clipper)
    other.load_state_dict(sd)
    clipper.load_state_dict(sd)
    for step in range(21, 40):
        _with_grads(model, scale=1.0 + 10.0 * (step == 35), seed=step)
        a = clipper(model.parameters())
        _with_grads(model, scale=1.0 + 10.0 * (step == 35), seed=step)
        b = other(model.parameters())
        assert torch.equal(a.coef, b.coef) and torch.equal(a.norm, b.norm)


def test_clipper_state_dict_round_trip_fresh_instance() -> None:
    for make in (tclip.EMAClip, tclip.QuantileClip, tclip.ZClip):
        a = make()
        model = _model()
        for step in range(30):
            a(_with_grads(model, seed=step).parameters())
        b = make()
        b.load_state_dict(a.state_dict())
        assert _sd_equal(a.state_dict(), b.state_dict())
        for step in range(30, 40):
            ra = a(_with_grads(model, seed=step).parameters())
            rb = b(_with_grads(model, seed=step).parameters())
            assert torch.equal(ra.coef, rb.coef)


def test_zclip_defaults_and_package_parity() -> None:
    zclip = pytest.importorskip("zclip")
    ours = tclip.ZClip()
    assert ours.max_grad_norm == 1.0  # the package's default (DESIGN.md, issue 14)
    theirs = zclip.ZClip()  # max_grad_norm=1.0 in the package
    ours_capped = tclip.ZClip()
    theirs_nocap = zclip.ZClip(max_grad_norm=None)
    ours_nocap = tclip.ZClip(max_grad_norm=None)
    g = torch.Generator().manual_seed(1)
    scales = [1.0 + 0.1 * torch.rand((), generator=g).item() for _ in range(80)]
    scales[40] = 30.0
    scales[60] = 8.0
    for step, s in enumerate(scales):
        pairs = ((ours_capped, theirs), (ours_nocap, theirs_nocap))
        for mine, pkg in pairs:
            m1, m2 = _with_grads(_model(), scale=s * 0.3, seed=step), _with_grads(_model(), 0, 0)
            for p, q in zip(m2.parameters(), m1.parameters(), strict=False):
                p.grad = q.grad.clone()  # type: ignore[union-attr]
            mine(m1.parameters())
            pkg.step(m2)
            for a, b in zip(_grads(m1), _grads(m2), strict=False):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("make", "arg"),
    [
        (lambda: tclip.NormClip(-1.0), "max_norm"),
        (lambda: tclip.NormClip(float("nan")), "max_norm"),
        (lambda: tclip.NormClip(1.0, norm_type="two"), "norm_type"),  # type: ignore[arg-type]
        (lambda: tclip.ValueClip(-0.1), "clip_value"),
        (lambda: tclip.QuantileClip(quantile=1.5), "quantile"),
        (lambda: tclip.QuantileClip(window=0), "window"),
        (lambda: tclip.ZClip(alpha=1.0), "alpha"),
        (lambda: tclip.ZClip(mode="bogus"), "mode"),
        (lambda: tclip.ZClip(clip_option="bogus"), "clip_option"),
        (lambda: tclip.AGC(clip_factor=0.0), "clip_factor"),
        (lambda: tclip.AGC(eps=-1.0), "eps"),
    ],
)
def test_clipper_bad_settings(make, arg: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((ValueError, TypeError), match=arg):
        make()


def test_clipper_bad_parameters_leave_state() -> None:
    clipper = tclip.ZClip(warmup_steps=2)
    model = _model()
    for step in range(5):
        clipper(_with_grads(model, seed=step).parameters())
    sd = clipper.state_dict()
    with pytest.raises((TypeError, ValueError)):
        clipper([torch.zeros(2, requires_grad=True), "not a tensor"])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        clipper([])
    assert _sd_equal(sd, clipper.state_dict())


def test_nonfinite_never_enters_clipper_state() -> None:
    for make in (tclip.EMAClip, tclip.QuantileClip, tclip.ZClip):
        clipper = make()
        model = _model()
        for step in range(30):
            clipper(_with_grads(model, seed=step).parameters())
        sd = clipper.state_dict()
        bad = _with_grads(model, seed=99)
        next(bad.parameters()).grad[0, 0] = float("inf")  # type: ignore[index]
        clipper(bad.parameters())
        assert _sd_equal(sd, clipper.state_dict()), make


def test_clip_under_compile() -> None:
    model = _with_grads(_model())
    params = list(model.parameters())
    fn = torch.compile(tclip.clip_grad_norm_, backend="aot_eager", fullgraph=True)
    before = _grads(model)
    total = fn(params, 0.5)
    ref = torch.cat([g.flatten() for g in before]).norm()
    assert total.item() == pytest.approx(ref.item(), rel=1e-5)


# --------------------------------------------------------------------------------------- init
INIT_FUNCS = [
    ("xavier_uniform_", {}),
    ("xavier_normal_", {}),
    ("kaiming_uniform_", {"a": 0.1, "mode": "fan_out", "nonlinearity": "leaky_relu"}),
    ("kaiming_normal_", {"a": 0, "mode": "fan_in", "nonlinearity": "relu"}),
    ("orthogonal_", {"gain": 2.0}),
    ("trunc_normal_", {"mean": 0.0, "std": 0.5, "a": -1.0, "b": 1.0}),
]


@pytest.mark.parametrize(("name", "kwargs"), INIT_FUNCS, ids=[n for n, _ in INIT_FUNCS])
def test_init_torch_names_generator_and_rng(name: str, kwargs: dict) -> None:
    ours = getattr(tinit, name)
    theirs = getattr(torch.nn.init, name)
    t = torch.empty(64, 32)
    state = torch.get_rng_state()
    out = ours(t, **kwargs, generator=torch.Generator().manual_seed(3))
    assert out is t
    assert torch.equal(torch.get_rng_state(), state)
    again = ours(torch.empty(64, 32), **kwargs, generator=torch.Generator().manual_seed(3))
    assert torch.equal(t, again)
    ref = theirs(torch.empty(64, 32), **kwargs)
    # same distribution: compare the std within sampling error
    rel_se = 5.0 / math.sqrt(t.numel() / 2)
    assert t.std().item() == pytest.approx(ref.std().item(), rel=rel_se)
    # positional generator position as torch (after the torch args)
    p = nn.Parameter(torch.empty(8, 4))
    assert ours(p, **kwargs) is p and p.requires_grad


def test_calculate_gain_matches_torch() -> None:
    for nl in [
        "linear",
        "conv1d",
        "conv2d",
        "conv3d",
        "conv_transpose1d",
        "conv_transpose2d",
        "conv_transpose3d",
        "sigmoid",
        "tanh",
        "relu",
        "leaky_relu",
        "selu",
    ]:
        assert tinit.calculate_gain(nl) == pytest.approx(torch.nn.init.calculate_gain(nl))
    assert tinit.calculate_gain("leaky_relu", 0.2) == pytest.approx(
        torch.nn.init.calculate_gain("leaky_relu", 0.2)
    )
    with pytest.raises(ValueError, match="nonlinearity|bogus"):
        tinit.calculate_gain("bogus")


@pytest.mark.parametrize(
    ("mode", "distribution"),
    [("fan_in", "truncated_normal"), ("fan_out", "untruncated_normal"), ("fan_avg", "uniform")],
)
def test_variance_scaling_keras(mode: str, distribution: str) -> None:
    t = torch.empty(200, 100)
    out = tinit.variance_scaling_(
        t, 2.0, mode, distribution, generator=torch.Generator().manual_seed(0)
    )
    assert out is t
    fan = {"fan_in": 100, "fan_out": 200, "fan_avg": 150}[mode]
    var = 2.0 / fan
    se = var * math.sqrt(2.0 / t.numel()) * 5
    assert t.double().var().item() == pytest.approx(var, abs=se)
    if distribution == "truncated_normal":
        # Keras truncates at 2 stddev of the underlying normal (std = sqrt(var)/.8796)
        assert t.abs().max().item() <= 2 * math.sqrt(var) / 0.87962566103423978 + 1e-6
    if distribution == "uniform":
        assert t.abs().max().item() <= math.sqrt(3 * var) + 1e-6
    tinit.variance_scaling_(torch.empty(4, 3))  # defaults


def test_variance_scaling_bad() -> None:
    with pytest.raises(ValueError, match="scale"):
        tinit.variance_scaling_(torch.empty(3, 3), scale=0.0)
    with pytest.raises(ValueError, match="mode"):
        tinit.variance_scaling_(torch.empty(3, 3), mode="fan_sum")
    with pytest.raises(ValueError, match="distribution"):
        tinit.variance_scaling_(torch.empty(3, 3), distribution="normalish")
    with pytest.raises(ValueError, match="tensor"):
        tinit.xavier_uniform_(torch.empty(3))
    with pytest.raises(ValueError, match="mode"):
        tinit.kaiming_normal_(torch.empty(3, 3), mode="fan")
    with pytest.raises(ValueError, match="gain"):
        tinit.orthogonal_(torch.empty(3, 3), gain=-1.0)


def test_fan_in_and_fan_out_like_torch() -> None:
    for shape in [(5, 3), (8, 4, 3), (8, 4, 3, 3), (8, 4, 2, 3, 3)]:
        t = torch.empty(shape)
        ours = tinit.fan_in_and_fan_out(t)
        ref = torch.nn.init._calculate_fan_in_and_fan_out(t)
        assert tuple(ours) == tuple(ref)


def test_lecun_variance() -> None:
    t = torch.empty(300, 100)
    tinit.lecun_normal_(t, generator=torch.Generator().manual_seed(0))
    assert t.double().var().item() == pytest.approx(1 / 100, rel=5 * math.sqrt(2 / t.numel()))
    tinit.lecun_uniform_(t, generator=torch.Generator().manual_seed(0))
    assert t.double().var().item() == pytest.approx(1 / 100, rel=5 * math.sqrt(2 / t.numel()))


def test_init_model_report_and_rules() -> None:
    model = nn.Sequential(
        nn.Linear(16, 32),
        nn.ReLU(),
        nn.Linear(32, 32),
        nn.Tanh(),
        nn.Linear(32, 8),
        nn.SELU(),
        nn.Linear(8, 2),
    )
    state = torch.get_rng_state()
    report = tinit.init_model(model, scheme="auto", generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)
    text = str(report)
    assert "0.weight" in text
    for layer in model:
        if isinstance(layer, nn.Linear):
            assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    report2 = tinit.init_model(_model())
    assert len(report2.records) >= 2
    lstm = nn.LSTM(4, 8)
    tinit.init_model(lstm)
    f = slice(8, 16)
    torch.testing.assert_close((lstm.bias_ih_l0[f] + lstm.bias_hh_l0[f]).detach(), torch.ones(8))
    w = lstm.weight_hh_l0.detach()
    for k in range(4):
        blk = w[k * 8 : (k + 1) * 8]
        torch.testing.assert_close(blk @ blk.T, torch.eye(8), atol=1e-5, rtol=0)


def test_lsuv_and_variance_profile() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(32, 32), nn.ReLU())])
    batch = torch.randn(64, 32)
    model.eval()
    tinit.lsuv_(model, batch)
    assert not model.training
    with torch.no_grad():
        h = batch
        for layer in model:
            h = layer(h)
            if isinstance(layer, nn.Linear):
                assert h.var().item() == pytest.approx(1.0, abs=0.1 + 1e-6)
    prof = tinit.variance_profile(model, batch)
    assert len(list(prof.rows)) >= 6
    row = prof.rows[0]
    assert row.second_moment >= 0 and row.std >= 0


# --------------------------------------------------------------------------------------- norm
NORM_CASES = [
    ("BatchNorm1d", (6,), {}, (4, 6, 5)),
    ("BatchNorm1d", (6,), {"momentum": None, "affine": False}, (4, 6)),
    ("BatchNorm2d", (3,), {"eps": 1e-3, "momentum": 0.3}, (4, 3, 5, 5)),
    ("BatchNorm2d", (3,), {"track_running_stats": False}, (4, 3, 5, 5)),
    ("BatchNorm3d", (2,), {}, (2, 2, 3, 3, 3)),
    ("LayerNorm", ((5, 7),), {}, (3, 5, 7)),
    ("LayerNorm", (7,), {"elementwise_affine": False}, (3, 5, 7)),
    ("LayerNorm", (7,), {"bias": False}, (3, 5, 7)),
    ("GroupNorm", (2, 6), {}, (3, 6, 4)),
    ("GroupNorm", (3, 6), {"affine": False, "eps": 1e-3}, (3, 6, 2, 2)),
    ("InstanceNorm1d", (4,), {}, (2, 4, 9)),
    ("InstanceNorm1d", (4,), {"affine": True, "track_running_stats": True}, (2, 4, 9)),
    ("InstanceNorm2d", (4,), {"affine": True}, (2, 4, 5, 5)),
    ("InstanceNorm3d", (4,), {"track_running_stats": True}, (2, 4, 3, 3, 3)),
    ("RMSNorm", (7,), {}, (3, 5, 7)),
    ("RMSNorm", ((5, 7),), {"eps": 1e-5, "elementwise_affine": False}, (3, 5, 7)),
]


@pytest.mark.parametrize(("name", "args", "kwargs", "shape"), NORM_CASES)
def test_norm_torch_parity(name: str, args: tuple, kwargs: dict, shape: tuple) -> None:
    torch.manual_seed(0)
    theirs = getattr(nn, name)(*args, **kwargs)
    ours = getattr(tnorm, name)(*args, **kwargs)
    assert _strip_path(repr(ours)) == _strip_path(repr(theirs))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    with torch.no_grad():
        for p in theirs.parameters():
            p.uniform_(0.5, 1.5)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    for _ in range(2):
        x = torch.randn(shape) * 3 + 1
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = ours(x1), theirs(x2)
        torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
        (y1 * torch.arange(y1.numel()).reshape(y1.shape).sin()).sum().backward()
        (y2 * torch.arange(y2.numel()).reshape(y2.shape).sin()).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)
        for p, q in zip(ours.parameters(), theirs.parameters(), strict=False):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)
    for k, v in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    back = getattr(nn, name)(*args, **kwargs)
    back.load_state_dict(ours.state_dict(), strict=True)
    ours.eval(), theirs.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize(
    "name", ["BatchNorm2d", "LayerNorm", "GroupNorm", "RMSNorm", "InstanceNorm2d"]
)
def test_norm_dtypes(name: str, dtype: torch.dtype) -> None:
    args = {"LayerNorm": (5,), "RMSNorm": (5,), "GroupNorm": (2, 4)}.get(name, (4,))
    shape = (3, 4, 5, 5) if name != "GroupNorm" else (3, 4, 5)
    if name in ("LayerNorm", "RMSNorm"):
        shape = (3, 4, 5)
    ours = getattr(tnorm, name)(*args, dtype=dtype)
    theirs = getattr(nn, name)(*args, dtype=torch.float64)
    x = torch.randn(shape, dtype=dtype)
    y = ours(x)
    assert y.dtype == dtype
    tol = 1e-2 if dtype != torch.float64 else 1e-10
    torch.testing.assert_close(y.double(), theirs(x.double()), rtol=tol, atol=tol * 5)


def test_sync_batch_norm_single_process_is_batch_norm() -> None:
    torch.manual_seed(0)
    sync, bn = tnorm.SyncBatchNorm(3), nn.BatchNorm2d(3)
    assert list(sync.state_dict()) == list(bn.state_dict())
    assert _strip_path(repr(sync)) == _strip_path(repr(nn.SyncBatchNorm(3)))
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(sync(x), bn(x))
    torch.testing.assert_close(sync.running_var, bn.running_var)
    conv = tnorm.convert_sync_batchnorm(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))
    assert isinstance(conv[1], tnorm.SyncBatchNorm)


def test_frozen_and_ghost() -> None:
    torch.manual_seed(0)
    frozen = tnorm.FrozenBatchNorm2d(3)
    assert set(frozen.state_dict()) >= {"weight", "bias", "running_mean", "running_var"}
    assert list(frozen.parameters()) == []
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.uniform_(), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_()
    frozen.load_state_dict(bn.state_dict(), strict=False)
    bn.eval()
    x = torch.randn(2, 3, 4, 4)
    frozen.train()
    torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=1e-5)
    ghost = tnorm.GhostBatchNorm(3, virtual_batch_size=2)
    x = torch.randn(5, 3, 4)
    y = ghost(x)
    # documented: a remainder chunk of one sample is merged into the previous chunk
    assert tnorm.chunk_sizes(5, 2) == [2, 3]
    ref = torch.cat(
        [nn.functional.batch_norm(c, None, None, training=True) for c in x.split([2, 3])]
    )
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    ghost.eval()
    bn1 = nn.BatchNorm1d(3)
    bn1.load_state_dict(ghost.state_dict())
    bn1.eval()
    torch.testing.assert_close(ghost(x), bn1(x))


def test_norm_functional_like_torch() -> None:
    F = tnorm.functional
    x = torch.randn(4, 6, 5)
    w, b = torch.rand(6), torch.rand(6)
    rm, rv = torch.zeros(6), torch.ones(6)
    torch.testing.assert_close(
        F.batch_norm(x, rm.clone(), rv.clone(), w, b, True, 0.1, 1e-5),
        nn.functional.batch_norm(x, rm.clone(), rv.clone(), w, b, True, 0.1, 1e-5),
    )
    torch.testing.assert_close(F.layer_norm(x, (5,)), nn.functional.layer_norm(x, (5,)))
    torch.testing.assert_close(F.group_norm(x, 3), nn.functional.group_norm(x, 3))
    torch.testing.assert_close(F.instance_norm(x), nn.functional.instance_norm(x))
    torch.testing.assert_close(F.rms_norm(x, (5,)), nn.functional.rms_norm(x, (5,)))


@pytest.mark.parametrize(
    ("make", "arg"),
    [
        (lambda: tnorm.GroupNorm(4, 6), "num_groups"),
        (lambda: tnorm.BatchNorm2d(3, eps=0.0), "eps"),
        (lambda: tnorm.BatchNorm2d(3, momentum=1.5), "momentum"),
        (lambda: tnorm.LayerNorm(4, eps=-1.0), "eps"),
    ],
)
def test_norm_bad_settings(make, arg: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=arg):
        make()


def test_norm_bad_input_leaves_state() -> None:
    bn = tnorm.BatchNorm2d(3)
    sd = {k: v.clone() for k, v in bn.state_dict().items()}
    with pytest.raises(ValueError, match="input"):
        bn(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="input|channel"):
        bn(torch.randn(2, 4, 4, 4))
    assert _sd_equal(sd, bn.state_dict())
    with pytest.raises(ValueError):
        tnorm.BatchNorm1d(3)(torch.randn(1, 3))
    with pytest.raises(ValueError):
        nn.BatchNorm1d(3)(torch.randn(1, 3))


def test_norm_under_compile() -> None:
    for layer, shape in ((tnorm.BatchNorm2d(3), (4, 3, 4, 4)), (tnorm.RMSNorm(6), (2, 6))):
        x = torch.randn(shape)
        ref = layer(x)
        layer.load_state_dict({**layer.state_dict()})
        compiled = torch.compile(layer, backend="aot_eager")
        layer.eval()
        torch.testing.assert_close(compiled(x), layer(x))
        assert ref.shape == x.shape


# ------------------------------------------------------------------------------------ dropout
DROP_CASES = [
    ("Dropout", (0.3,), (20, 30)),
    ("Dropout1d", (0.3,), (4, 5, 6)),
    ("Dropout2d", (0.3,), (4, 5, 6, 6)),
    ("Dropout3d", (0.3,), (2, 5, 3, 3, 3)),
    ("AlphaDropout", (0.3,), (20, 30)),
]


@pytest.mark.parametrize(("name", "args", "shape"), DROP_CASES)
def test_dropout_torch_surface(name: str, args: tuple, shape: tuple) -> None:
    ours = getattr(tdrop, name)(*args)
    theirs = getattr(nn, name)(*args)
    assert _strip_path(repr(ours)) == _strip_path(repr(theirs))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(shape)
    ours.eval()
    assert torch.equal(ours(x), x)
    ours.train()
    state = torch.get_rng_state()
    y1 = getattr(tdrop, name)(*args, generator=torch.Generator().manual_seed(5))(x)
    assert torch.equal(torch.get_rng_state(), state)
    y2 = getattr(tdrop, name)(*args, generator=torch.Generator().manual_seed(5))(x)
    assert torch.equal(y1, y2)
    default = getattr(tdrop, name)()
    assert default.p == 0.5 and default.inplace is False
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        assert ours(x.to(dtype)).dtype == dtype


def test_dropout_inverted_and_original() -> None:
    x = torch.ones(200, 500)
    y = tdrop.Dropout(0.2, generator=torch.Generator().manual_seed(0))(x)
    kept = (y != 0).double().mean().item()
    n = x.numel()
    assert abs(kept - 0.8) < 5 * math.sqrt(0.16 / n)
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / 0.8))
    orig = tdrop.Dropout(0.2, mode="original", generator=torch.Generator().manual_seed(0))
    y = orig(x)
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    orig.eval()
    torch.testing.assert_close(orig(x), x * 0.8)
    f = tdrop.functional.dropout(x, 0.2, True, generator=torch.Generator().manual_seed(0))
    assert abs((f != 0).double().mean().item() - 0.8) < 5 * math.sqrt(0.16 / n)
    t = torch.ones(4, 4)
    out = tdrop.Dropout(0.5, inplace=True)(t)
    assert out.data_ptr() == t.data_ptr()


def test_spatial_whole_channels() -> None:
    x = torch.ones(8, 16, 5, 5)
    y = tdrop.Dropout2d(0.5, generator=torch.Generator().manual_seed(0))(x)
    per = y.flatten(2)
    assert torch.all(per.amax(-1) == per.amin(-1))


def test_dropconnect_droppath_dropblock() -> None:
    lin = nn.Linear(8, 4)
    keys = list(lin.state_dict())
    dc = tdrop.DropConnect(lin, 0.5, generator=torch.Generator().manual_seed(0))
    assert [k.split(".")[-1] for k in dc.state_dict()] == keys
    x = torch.randn(3, 8)
    dc.eval()
    torch.testing.assert_close(dc(x), lin(x))
    with pytest.raises((TypeError, ValueError), match="module"):
        tdrop.DropConnect(nn.ReLU(), 0.5)
    dp = tdrop.DropPath(0.5, scale_by_keep=True, generator=torch.Generator().manual_seed(0))
    x = torch.ones(400, 3, 2)
    y = dp(x)
    per = y.flatten(1)
    assert torch.all((per == 0).all(1) | (per == 2.0).all(1))
    dp2 = tdrop.DropPath(0.5, scale_by_keep=False, generator=torch.Generator().manual_seed(0))
    assert set(dp2(x).unique().tolist()) <= {0.0, 1.0}
    rates = tdrop.drop_path_rates(0.2, 5)
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    db = tdrop.DropBlock2d(0.2, 3, generator=torch.Generator().manual_seed(0))
    x = torch.ones(16, 8, 20, 20)
    y = db(x)
    dropped = (y == 0).double().mean().item()
    assert dropped == pytest.approx(0.2, abs=0.03)
    db.eval()
    assert torch.equal(db(x), x)
    with pytest.raises(ValueError, match="block_size"):
        tdrop.DropBlock2d(0.2, 0)


@pytest.mark.parametrize("name", ["Dropout", "Dropout2d", "AlphaDropout", "DropPath"])
@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_dropout_bad_p(name: str, p: float) -> None:
    with pytest.raises(ValueError, match="p"):
        getattr(tdrop, name)(p)


def test_dropout_spatial_bad_rank() -> None:
    with pytest.raises(ValueError, match="input"):
        tdrop.Dropout2d(0.5)(torch.randn(5))


def test_dropout_compile() -> None:
    layer = tdrop.Dropout(0.3)
    layer.eval()
    compiled = torch.compile(layer, backend="aot_eager")
    x = torch.randn(4, 5)
    assert torch.equal(compiled(x), x)
    layer.train()
    y = torch.compile(tdrop.Dropout(0.3), backend="aot_eager", fullgraph=True)(x)
    assert ((y == 0) | torch.isclose(y, x / 0.7)).all()
    clipper = tclip.NormClip(0.5)
    model = _with_grads(_model())
    result = torch.compile(lambda ps: clipper(ps), backend="aot_eager", fullgraph=True)(
        list(model.parameters())
    )
    after = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()  # type: ignore[union-attr]
    assert after.item() == pytest.approx(0.5, rel=1e-4) and result.coef.item() < 1


class _MCNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 16)
        self.bn = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.3)
        self.drop2 = tdrop.Dropout(0.3)
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop2(self.drop(torch.relu(self.bn(self.lin(x))))))


def test_mc_predict_contract() -> None:
    torch.manual_seed(0)
    model = _MCNet()
    model.eval()
    bn_before = {k: v.clone() for k, v in model.bn.state_dict().items()}
    x = torch.randn(7, 5)
    res = tdrop.mc_predict(model, x, 20)
    assert res.mean.shape == (7, 3) and res.std.shape == (7, 3)
    assert res.predictive_entropy is not None
    assert res.predictive_entropy.shape == (7,)
    assert (res.std > 0).all()
    mean, spread, entropy = res  # "returning mean, spread and predictive entropy"
    assert mean is res.mean and spread is res.std and entropy is res.predictive_entropy
    assert not model.training and not model.drop.training
    assert _sd_equal(bn_before, model.bn.state_dict())
    # one call by name
    res2 = tdrop.mc_predict(model, x, n_samples=5, generator=torch.Generator().manual_seed(1))
    res3 = tdrop.mc_predict(model, x, n_samples=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(res2.mean, res3.mean)


# ---------------------------------------------------------------------------------- monitor/cli
def test_monitor_positional_contract(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = Monitor(model, opt, tmp_path)
    mon2 = Monitor(model)
    for _step in range(3):
        loss = model(torch.randn(4, 6)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss=loss)
    assert isinstance(mon.summary(), str)
    sd = mon.state_dict()
    mon2.load_state_dict(sd)
    mon.close()
    mon2.close()
    assert list(tmp_path.glob("*.jsonl"))


@pytest.mark.parametrize("argv", [["-m", "traintech", "version"], ["-m", "traintech", "--help"]])
def test_cli(argv: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    if "version" in argv:
        assert traintech.__version__ in out.stdout
    else:
        for cmd in ("demo", "report", "version"):
            assert cmd in out.stdout


@pytest.mark.parametrize(
    "name",
    ["dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"],
)
def test_dropout_functional_torch_defaults(name: str) -> None:
    import inspect

    ours = inspect.signature(getattr(tdrop.functional, name)).parameters
    theirs = inspect.signature(getattr(nn.functional, name)).parameters
    for arg, param in theirs.items():
        assert arg in ours
        assert ours[arg].default == param.default, (name, arg)
    assert "generator" in ours


def test_quantile_clip_numpy_reference() -> None:
    np = pytest.importorskip("numpy")
    gen = torch.Generator().manual_seed(0)
    norms = (torch.rand(40, generator=gen, dtype=torch.float64) * 3 + 0.5).tolist()
    norms[20] = 50.0
    for window in (1000, 7):
        clipper = tclip.QuantileClip(quantile=0.9, window=window)
        history: list[float] = []
        for step, n in enumerate(norms):
            p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
            p.grad = torch.tensor([n], dtype=torch.float64)
            result = clipper([p])
            # threshold from the norms before this step (as the autoclip package; step 0 unclipped)
            thr = np.quantile(history[-window:], 0.9) if history else math.inf
            expected = min(1.0, thr / (n + 1e-6))
            assert result.coef.item() == pytest.approx(expected, rel=1e-6), (window, step)
            history.append(n)


def _timm_agc_reference(params: list[torch.Tensor], clip_factor: float, eps: float) -> None:
    def unitwise(x: torch.Tensor) -> torch.Tensor:
        if x.ndim <= 1:
            return x.norm(2.0)
        return x.norm(2.0, dim=tuple(range(1, x.ndim)), keepdim=True)

    for p in params:
        g = p.grad.detach()  # type: ignore[union-attr]
        max_norm = unitwise(p.detach()).clamp_(min=eps).mul_(clip_factor)
        gn = unitwise(g)
        clipped = g * (max_norm / gn.clamp(min=1e-6))
        g.copy_(torch.where(gn < max_norm, g, clipped))


@pytest.mark.parametrize(("clip_factor", "eps"), [(0.01, 1e-3), (0.1, 1e-2)])
def test_agc_matches_timm_formula(clip_factor: float, eps: float) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    ours = _with_grads(model, scale=0.05)
    ref_model = _with_grads(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2)))
    ref_model.load_state_dict(model.state_dict())
    for p, q in zip(ref_model.parameters(), ours.parameters(), strict=True):
        p.grad = q.grad.clone()  # type: ignore[union-attr]
    with torch.no_grad():
        ref_model[0].bias.zero_()  # a zero-weight unit: eps bound
        ours[0].bias.zero_()
    tclip.AGC(clip_factor=clip_factor, eps=eps)(ours.parameters())
    _timm_agc_reference(list(ref_model.parameters()), clip_factor, eps)
    for a, b in zip(_grads(ours), _grads(ref_model), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "zscore", "clip_option": "mean"},
        {"mode": "percentile", "max_grad_norm": 2.0},
        {"mode": "zscore", "skip_update_on_spike": True},
        {"alpha": 0.9, "z_thresh": 1.5, "warmup_steps": 5, "clip_factor": 0.5},
    ],
)
def test_zclip_modes_match_package(kwargs: dict) -> None:
    zclip = pytest.importorskip("zclip")
    full = {"max_grad_norm": None, **kwargs}
    ours, theirs = tclip.ZClip(**full), zclip.ZClip(**full)
    gen = torch.Generator().manual_seed(2)
    for step in range(60):
        s = 1.0 + 0.2 * torch.rand((), generator=gen).item() + 20.0 * (step in (30, 31, 45))
        m1 = _with_grads(_model(), scale=s, seed=step)
        m2 = _with_grads(_model(), scale=s, seed=step)
        ours(m1.parameters())
        theirs.step(m2)
        for a, b in zip(_grads(m1), _grads(m2), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("clipper", _clippers(), ids=lambda c: type(c).__name__)
def test_clippers_low_precision(clipper: tclip.Clipper, dtype: torch.dtype) -> None:
    model = _model().to(dtype)
    for step in range(5):
        _with_grads(model, seed=step)
        before = _grads(model)
        result = clipper(model.parameters())
        ref = torch.cat([g.double().flatten() for g in before]).norm()
        assert result.norm.item() == pytest.approx(ref.item(), rel=1e-2)
        for p in model.parameters():
            assert p.grad.dtype == dtype and p.grad.isfinite().all()  # type: ignore[union-attr]


_LIN = nn.Linear(4, 3)
_MC_NET = _MCNet().eval()


def _rng_untouched(fn) -> None:  # type: ignore[no-untyped-def]
    state = torch.get_rng_state()
    a = fn(torch.Generator().manual_seed(11))
    assert torch.equal(torch.get_rng_state(), state)
    b = fn(torch.Generator().manual_seed(11))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "make",
    [
        lambda g: tdrop.DropPath(0.5, generator=g)(torch.ones(8, 3)),
        lambda g: tdrop.DropBlock2d(0.3, 3, generator=g)(torch.ones(2, 2, 8, 8)),
        lambda g: tdrop.DropConnect(_LIN, 0.5, generator=g)(torch.ones(2, 4)),
        lambda g: tdrop.FeatureAlphaDropout(0.3, generator=g)(torch.ones(2, 3, 4)),
        lambda g: tdrop.functional.dropout(torch.ones(50), 0.5, generator=g),
        lambda g: tdrop.functional.dropout2d(torch.ones(2, 5, 3, 3), 0.5, generator=g),
        lambda g: tdrop.functional.alpha_dropout(torch.ones(50), 0.5, True, generator=g),
        lambda g: tdrop.functional.drop_path(torch.ones(8, 3), 0.5, True, generator=g),
        lambda g: tdrop.functional.drop_block2d(torch.ones(2, 2, 8, 8), 0.3, 3, True, generator=g),
        lambda g: tdrop.Dropout(0.5, generator=g, low_memory=True)(torch.ones(50)),
        lambda g: tdrop.mc_predict(_MC_NET, torch.ones(3, 5), 4, g).mean,
        lambda g: tinit.lecun_normal_(torch.empty(4, 4), generator=g),
        lambda g: tinit.variance_scaling_(torch.empty(4, 4), generator=g),
    ],
)
def test_generator_leaves_global_rng(make) -> None:  # type: ignore[no-untyped-def]
    _rng_untouched(make)


def test_init_model_and_lsuv_generator_reproducible() -> None:
    outs = []
    for _ in range(2):
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        state = torch.get_rng_state()
        tinit.lsuv_(
            model,
            torch.randn(16, 6, generator=torch.Generator().manual_seed(0)),
            generator=torch.Generator().manual_seed(4),
        )
        assert torch.equal(torch.get_rng_state(), state)
        outs.append(model[0].weight.detach().clone())
    assert torch.equal(outs[0], outs[1])


def test_monitor_bad_input(tmp_path: Path) -> None:
    model = _model()
    with pytest.raises(ValueError, match="every"):
        Monitor(model, every=0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises((ValueError, OSError)):
        Monitor(model, log_dir=blocker / "sub")


def test_cli_report(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = Monitor(model, opt, tmp_path)
    for _ in range(4):
        loss = model(torch.randn(4, 6)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss=loss)
    mon.close()
    out = subprocess.run(
        [sys.executable, "-m", "traintech", "report", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"},
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "report.html").stat().st_size > 1000


def test_state_dicts_survive_torch_save_weights_only(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.1), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    objs: dict[str, object] = {c.__class__.__name__ + str(i): c for i, c in enumerate(_clippers())}
    for step in range(30):
        for c in objs.values():
            c(_with_grads(model, seed=step).parameters())  # type: ignore[operator]
    objs["Monitor"] = Monitor(model, opt)
    objs["DropoutScheduler"] = tdrop.DropoutScheduler(model, 10)
    objs["GuardedStep"] = tclip.GuardedStep(opt, tclip.ZClip())
    for name, obj in objs.items():
        path = tmp_path / f"{name}.pt"
        torch.save(obj.state_dict(), path)  # type: ignore[attr-defined]
        obj.load_state_dict(torch.load(path, weights_only=True))  # type: ignore[attr-defined]
    objs["Monitor"].close()  # type: ignore[attr-defined]


def test_per_module_clipping() -> None:
    model = _with_grads(_model(), scale=5.0)
    norms = tclip.clip_grad_norm_per_layer_(model.named_parameters(), 1.0, by="module")
    assert set(norms) == {"0", "2"}
    for prefix in ("0", "2"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix + ".")]
        total = torch.cat([g.double().flatten() for g in grads]).norm()  # type: ignore[union-attr]
        assert total.item() <= 1.0 + 1e-5


def test_dropconnect_keeps_wrapped_keys() -> None:
    plain = nn.Sequential(nn.Linear(4, 3))
    wrapped = nn.Sequential(tdrop.DropConnect(nn.Linear(4, 3), 0.3))
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    wrapped.load_state_dict(plain.state_dict(), strict=True)


@pytest.mark.parametrize(("factor", "beta", "warmup"), [(2.0, 0.98, 25), (1.5, 0.9, 3)])
def test_ema_clip_documented_rule(factor: float, beta: float, warmup: int) -> None:
    gen = torch.Generator().manual_seed(5)
    norms = (torch.rand(60, generator=gen, dtype=torch.float64) + 1).tolist()
    norms[40] = 30.0
    clipper = tclip.EMAClip(factor=factor, beta=beta, warmup_steps=warmup)
    m, n = 0.0, 0
    for step, g in enumerate(norms):
        p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        p.grad = torch.tensor([g], dtype=torch.float64)
        result = clipper([p])
        tau = math.inf if n < warmup else factor * m / (1 - beta**n)
        assert result.coef.item() == pytest.approx(min(1.0, tau / (g + 1e-6)), rel=1e-6), step
        m = beta * m + (1 - beta) * min(g, tau)
        n += 1


@pytest.mark.parametrize("fused", [False, True])
def test_guarded_step_skips_nonfinite(fused: bool) -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=fused)
    clipper = tclip.ZClip(warmup_steps=2)
    guard = tclip.GuardedStep(opt, clipper)
    for step in range(4):
        _with_grads(model, seed=step)
        guard.step()
    params = [p.detach().clone() for p in model.parameters()]
    opt_state = {k: {n: t.clone() for n, t in v.items()} for k, v in opt.state.items()}
    clip_state = clipper.state_dict()
    _with_grads(model, seed=9)
    next(model.parameters()).grad[0, 0] = float("nan")  # type: ignore[index]
    report = guard.step()
    assert bool(report.skipped)
    assert guard.steps_skipped == 1 and guard.consecutive_skips == 1 and guard.steps_taken == 4
    for a, b in zip(params, model.parameters(), strict=True):
        assert torch.equal(a, b)
    for k, v in opt.state.items():
        for n, t in v.items():
            assert torch.equal(t, opt_state[k][n])
    assert _sd_equal(clip_state, clipper.state_dict())
    _with_grads(model, seed=10)
    guard.step()
    assert guard.consecutive_skips == 0 and guard.steps_taken == 5
