"""Drop-in for real (issue 13): our layers are torch's classes and work wherever torch's do.

Every check runs OUR layer and TORCH's namesake side by side, in float64, with the same state:
torch's utilities (isinstance, convert_sync_batchnorm, swa_utils.update_bn, quantization
fusion), double backward, ``torch.func`` transforms, FX, export, meta construction,
channels_last, and which path (our CPU kernel or torch's op) runs where.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as TF
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vmap

import traintech.norm as tn
import traintech.norm._rms_norm as rms_module
import traintech.norm.functional as F
from _norm_helpers import randomize_norm_state
from traintech._compat import BatchNormBase, InstanceNormBase

TOL = {"rtol": 1e-10, "atol": 1e-10}

#: (id, class name, constructor args, constructor kwargs, input shape); constructed on both sides.
LAYERS: list[tuple[str, str, tuple[Any, ...], dict[str, Any], tuple[int, ...]]] = [
    ("bn1d", "BatchNorm1d", (4,), {}, (6, 4, 3)),
    ("bn2d", "BatchNorm2d", (3,), {"momentum": 0.3}, (4, 3, 4, 5)),
    ("bn2d_notrack", "BatchNorm2d", (3,), {"track_running_stats": False}, (4, 3, 3, 3)),
    ("bn3d", "BatchNorm3d", (2,), {"bias": False}, (3, 2, 2, 3, 2)),
    ("ln", "LayerNorm", (6,), {}, (3, 5, 6)),
    ("ln2", "LayerNorm", ((4, 6),), {"bias": False}, (2, 4, 6)),
    ("gn", "GroupNorm", (2, 6), {}, (3, 6, 4, 3)),
    ("in1d", "InstanceNorm1d", (4,), {"affine": True}, (3, 4, 7)),
    ("in2d_track", "InstanceNorm2d", (3,), {"affine": True, "track_running_stats": True},
     (2, 3, 4, 4)),
    ("in3d", "InstanceNorm3d", (2,), {}, (2, 2, 3, 3, 3)),
    ("rms", "RMSNorm", (6,), {"eps": 1e-5}, (3, 5, 6)),
    ("rms2", "RMSNorm", ((4, 6),), {}, (2, 4, 6)),
    ("rms_noaffine", "RMSNorm", (6,), {"elementwise_affine": False}, (4, 6)),
]  # fmt: skip
IDS = [row[0] for row in LAYERS]


def _pair(row: tuple[Any, ...], train: bool = True) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """(ours, torch's) in float64 with the same random parameters and buffers, and an input."""
    _, cls, args, kwargs, shape = row
    gen = torch.Generator().manual_seed(len(cls) + len(shape))
    theirs = getattr(nn, cls)(*args, **kwargs).double()
    randomize_norm_state(theirs, gen, torch.float64)
    ours = getattr(tn, cls)(*args, **kwargs).double()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.train(train)
    theirs.train(train)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5
    return ours, theirs, x


def _same_state(ours: nn.Module, theirs: nn.Module) -> None:
    mine, expected = ours.state_dict(), theirs.state_dict()
    # FrozenBatchNorm2d keeps no batch counter; every other key must be there and equal
    assert set(expected) - set(mine) <= {"num_batches_tracked"}, (set(mine), set(expected))
    for k, a in mine.items():
        torch.testing.assert_close(a, expected[k], **TOL, msg=k)


def _side_by_side(fn: Callable[[nn.Module], Any], ours: nn.Module, theirs: nn.Module) -> bool:
    """``fn`` on copies of both; same values where torch's works. False if torch's raised."""
    theirs_copy, ours_copy = copy.deepcopy(theirs), copy.deepcopy(ours)
    try:
        expected = fn(theirs_copy)
    except (RuntimeError, ValueError, NotImplementedError):
        return False
    actual = fn(ours_copy)
    torch.testing.assert_close(actual, expected, **TOL)
    _same_state(ours_copy, theirs_copy)
    return True


# --------------------------------------------------------------------------- torch sees them


@pytest.mark.parametrize("row", LAYERS, ids=IDS)
def test_every_layer_is_an_instance_of_its_torch_namesake(row):
    ours, theirs, _ = _pair(row)
    assert isinstance(ours, type(theirs))
    if isinstance(theirs, BatchNormBase):
        assert isinstance(ours, BatchNormBase)
    if isinstance(theirs, InstanceNormBase):
        assert isinstance(ours, InstanceNormBase)
    assert repr(ours) == repr(theirs)


def test_sync_ghost_and_fused_layers_are_torch_classes_too():
    # torch's BatchNorm base, not nn.SyncBatchNorm: DDP refuses any nn.SyncBatchNorm on CPU
    assert isinstance(tn.SyncBatchNorm(3), BatchNormBase)
    assert not isinstance(tn.SyncBatchNorm(3), nn.SyncBatchNorm)
    assert isinstance(tn.GhostBatchNorm(3, 2), BatchNormBase)
    assert isinstance(tn.FusedAddRMSNorm(4), nn.RMSNorm)
    assert isinstance(tn.FusedAddLayerNorm(4), nn.LayerNorm)


def test_torch_convert_sync_batchnorm_converts_ours(seed):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), tn.BatchNorm2d(4), nn.Sequential(tn.BatchNorm1d(4)))
    with torch.no_grad():
        model[1].running_mean.copy_(torch.randn(4, generator=seed))
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    assert type(converted[1]) is nn.SyncBatchNorm
    assert type(converted[2][0]) is nn.SyncBatchNorm
    torch.testing.assert_close(converted[1].running_mean, model[1].running_mean)
    ours = tn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    assert type(ours[1]) is tn.SyncBatchNorm


def test_swa_update_bn_recomputes_our_running_statistics(seed):
    batches = [torch.randn(8, 3, 5, generator=seed) * 2 + 1 for _ in range(4)]
    results = []
    for bn in (tn.BatchNorm1d(3), nn.BatchNorm1d(3)):
        model = nn.Sequential(nn.Conv1d(3, 3, 1), bn)
        nn.init.eye_(model[0].weight.squeeze(-1))
        nn.init.zeros_(model[0].bias)
        torch.optim.swa_utils.update_bn(batches, model)
        results.append((bn.running_mean.clone(), bn.running_var.clone()))
    torch.testing.assert_close(results[0], results[1])
    data = torch.cat(batches).transpose(0, 1).reshape(3, -1).double()
    torch.testing.assert_close(results[0][0].double(), data.mean(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("qat", [False, True])
def test_quantization_fuse_modules_fuses_our_batchnorm(qat, seed):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), tn.BatchNorm2d(4), nn.ReLU())
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2.0, generator=seed)
        model[1].weight.normal_(generator=seed)
    x = torch.randn(2, 3, 6, 6, generator=seed)
    tn_weight = model[1].weight
    if qat:
        fused = torch.ao.quantization.fuse_modules_qat(
            model.train(), [["0", "1", "2"]], inplace=True
        )
        assert type(fused[0]).__name__ == "ConvBnReLU2d"
        assert fused[0][1].weight is tn_weight  # the fused BN shares our parameters
        return
    model.eval()
    expected = model(x)
    fused = torch.ao.quantization.fuse_modules(model, [["0", "1", "2"]])
    assert type(fused[0]).__name__ == "ConvReLU2d"
    torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)


def test_weight_decay_exclusion_by_type_finds_our_layers():
    model = nn.Sequential(
        nn.Linear(4, 4), tn.LayerNorm(4), tn.RMSNorm(4), tn.BatchNorm1d(4), tn.GroupNorm(2, 4)
    )
    norm_types = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, BatchNormBase)
    no_decay = {id(p) for m in model.modules() if isinstance(m, norm_types) for p in m.parameters()}
    assert len(no_decay) == sum(1 for m in model[1:] for _ in m.parameters())


# --------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("row", LAYERS, ids=IDS)
def test_double_backward_and_gradgradcheck_match_torch(row):
    ours, theirs, x = _pair(row)
    names = [n for n, _ in theirs.named_parameters()]

    def fn_of(module: nn.Module) -> Callable[..., torch.Tensor]:
        buffers = dict(module.named_buffers())

        def fn(inp: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
            state = {**dict(zip(names, params, strict=True)), **copy.deepcopy(buffers)}
            return functional_call(module, state, (inp,))

        return fn

    params = [p.detach().clone().requires_grad_() for p in theirs.parameters()]
    xi = x.clone().requires_grad_()
    assert torch.autograd.gradgradcheck(fn_of(ours), (xi, *params))

    def penalty(module: nn.Module) -> list[torch.Tensor]:
        xg = x.clone().requires_grad_()
        ps = [p.detach().clone().requires_grad_() for p in theirs.parameters()]
        y = fn_of(module)(xg, *ps)
        v = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view(y.shape)
        (gx,) = torch.autograd.grad((y * v).sum(), xg, create_graph=True)
        return list(
            torch.autograd.grad(
                gx.square().sum(), [xg, *ps], allow_unused=True, materialize_grads=True
            )
        )

    torch.testing.assert_close(penalty(ours), penalty(theirs), **TOL)


@pytest.mark.parametrize("row", LAYERS, ids=IDS)
def test_torch_func_grad_jvp_jacrev_match_torch(row):
    ours, theirs, x = _pair(row)
    compared = 0
    for module_pair in ((ours, theirs), (ours.eval(), theirs.eval())):

        def loss_grad(m: nn.Module) -> dict[str, torch.Tensor]:
            params = {k: v.detach() for k, v in m.named_parameters()}
            return grad(lambda p: functional_call(m, p, (x,)).square().sum())(params)

        def forward_jvp(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
            return jvp(lambda inp: m(inp), (x,), (torch.ones_like(x),))

        def jacobian(m: nn.Module) -> torch.Tensor:
            return jacrev(lambda inp: m(inp))(x[:2])

        for fn in (loss_grad, forward_jvp, jacobian):
            compared += _side_by_side(fn, *module_pair)
    assert compared >= 3  # eval mode: every layer works under all three in torch


@pytest.mark.parametrize("row", LAYERS, ids=IDS)
def test_vmap_per_sample_gradients_match_torch(row):
    ours, theirs, x = _pair(row, train=False)
    if not list(theirs.parameters()):
        pytest.skip("no parameters: nothing to take per-sample gradients of")

    def per_sample(m: nn.Module) -> dict[str, torch.Tensor]:
        params = {k: v.detach() for k, v in m.named_parameters()}
        buffers = {k: v.detach() for k, v in m.named_buffers()}

        def loss(p: dict[str, torch.Tensor], sample: torch.Tensor) -> torch.Tensor:
            out = functional_call(m, (p, buffers), (sample.unsqueeze(0),))
            return out.square().sum()

        return vmap(grad(loss), in_dims=(None, 0))(params, x)

    assert _side_by_side(per_sample, ours, theirs)


@pytest.mark.parametrize("row", [r for r in LAYERS if r[1] in ("RMSNorm", "LayerNorm")],
                         ids=lambda r: r[0])  # fmt: skip
def test_forward_mode_ad_matches_torch(row):
    ours, theirs, x = _pair(row)
    tangent = torch.linspace(-1, 1, x.numel(), dtype=x.dtype).view(x.shape)

    def dual(m: nn.Module) -> torch.Tensor:
        with fwAD.dual_level():
            return fwAD.unpack_dual(m(fwAD.make_dual(x, tangent))).tangent

    assert _side_by_side(dual, ours, theirs)


# --------------------------------------------------------------------------- tracing


class _Wrap(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x * 1.5) + 1.0


@pytest.mark.parametrize("row", LAYERS, ids=IDS)
def test_fx_symbolic_trace_of_a_model_with_the_layer_matches_torch(row):
    ours, theirs, x = _pair(row)
    for train in (True, False):
        gm = torch.fx.symbolic_trace(_Wrap(copy.deepcopy(ours).train(train)))
        ref = _Wrap(copy.deepcopy(theirs).train(train))
        torch.testing.assert_close(gm(x), ref(x), **TOL)
        torch.testing.assert_close(gm(x), ref(x), **TOL)  # second step: updated running stats
        traced, expected = dict(gm.named_buffers()), dict(ref.named_buffers())
        # FX records buffer reads, not torch's in-place `num_batches_tracked.add_(1)` (it runs
        # once at trace time): the batch counter is torch's FX behaviour, the stats must match
        assert {k for k in expected if "running" in k} <= set(traced)
        for name, value in traced.items():
            torch.testing.assert_close(value, expected[name], **TOL, msg=name)


EXPORT_ROWS = [r for r in LAYERS if r[0] in ("bn2d", "ln", "gn", "in2d_track", "rms")]


@pytest.mark.parametrize("row", EXPORT_ROWS, ids=[r[0] for r in EXPORT_ROWS])
def test_torch_export_matches_torch(row):
    ours, theirs, x = _pair(row, train=False)
    ep = torch.export.export(_Wrap(ours), (x,))
    torch.testing.assert_close(ep.module()(x), _Wrap(theirs)(x), **TOL)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("traintech" in t for t in targets)  # torch's op is what export records


@pytest.mark.slow
def test_torch_compile_fullgraph_inductor_forward_and_backward_match_torch(seed):
    def model(kind: Any) -> nn.Module:
        return nn.Sequential(kind.LayerNorm(8), kind.RMSNorm(8, eps=1e-6), nn.Unflatten(-1, (2, 4)),
                             kind.GroupNorm(2, 4), kind.BatchNorm2d(4),
                kind.InstanceNorm2d(4, affine=True, track_running_stats=True))  # fmt: skip

    theirs = model(nn).double()
    ours = model(tn).double()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 4, 8, generator=seed, dtype=torch.float64)
    compiled = torch.compile(ours, fullgraph=True, backend="inductor")
    with mock.patch.object(rms_module, "rms_forward", side_effect=AssertionError("fast path")):
        outs = [compiled(x.clone().requires_grad_()) for _ in range(2)]
    xs = [x.clone().requires_grad_() for _ in range(2)]
    refs = [theirs(xi) for xi in xs]
    for out, ref in zip(outs, refs, strict=True):
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    outs[1].square().sum().backward()
    refs[1].square().sum().backward()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-9)
    _same_state(ours, theirs)


# --------------------------------------------------------------------------- meta, layouts


@pytest.mark.parametrize("row", LAYERS, ids=IDS)
def test_meta_construction_then_to_empty_and_reset_matches_a_fresh_layer(row):
    _, cls, args, kwargs, shape = row
    for kind in (tn, nn):
        layer = getattr(kind, cls)(*args, **kwargs, device="meta")
        assert all(t.is_meta for t in layer.state_dict().values())
        out = layer(torch.empty(shape, device="meta"))
        assert out.is_meta and out.shape == shape
        layer.to_empty(device="cpu")
        layer.reset_parameters()
        fresh = getattr(kind, cls)(*args, **kwargs)
        _same_state(layer, fresh)


@pytest.mark.parametrize("row", [r for r in LAYERS if len(r[4]) >= 4], ids=lambda r: r[0])
def test_channels_last_outputs_where_torch_keeps_them(row):
    ours, theirs, x = _pair(row)
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    xc = x.contiguous(memory_format=fmt)
    for train in (True, False):
        a, b = ours.train(train)(xc), theirs.train(train)(xc)
        torch.testing.assert_close(a, b, **TOL)
        assert a.is_contiguous(memory_format=fmt) == b.is_contiguous(memory_format=fmt)
        assert a.stride() == b.stride()


# --------------------------------------------------------------------------- dispatch


@pytest.fixture
def kernel_calls():
    """Count the calls of our CPU RMSNorm kernel (the fast path)."""
    with mock.patch.object(rms_module, "rms_forward", wraps=rms_module.rms_forward) as spy:
        yield spy


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_plain_cpu_tensors_take_our_kernel(dtype, kernel_calls, seed):
    layer = tn.RMSNorm(16).to(dtype)
    x = torch.randn(4, 16, generator=seed).to(dtype)
    torch.testing.assert_close(layer(x), TF.rms_norm(x, (16,), layer.weight))
    assert kernel_calls.call_count == 1


def test_transforms_tracers_and_other_tensors_take_torchs_op(kernel_calls, seed):
    layer = tn.RMSNorm(8).double()
    x = torch.randn(3, 8, generator=seed, dtype=torch.float64)
    ref = nn.RMSNorm(8).double()
    cases: list[Callable[[], Any]] = [
        lambda: grad(lambda t: layer(t).sum())(x),
        lambda: vmap(layer)(x),
        lambda: jvp(layer, (x,), (x,)),
        lambda: layer.to("meta")(torch.empty(3, 8, device="meta", dtype=torch.float64)),
        lambda: layer.to_empty(device="cpu"),
        lambda: layer(x[:0]),
    ]
    for case in cases:
        case()
    with fwAD.dual_level():
        layer(fwAD.make_dual(x, x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)
    exported = torch.export.export(_Wrap(layer), (x,))  # traces with fake tensors
    assert not any("traintech" in str(n.target) for n in exported.graph.nodes)
    torch.fx.symbolic_trace(_Wrap(layer))
    # a float32 weight with a float64 input: torch's op decides the result dtype
    assert tn.RMSNorm(8)(x).dtype == ref.float()(x).dtype
    assert kernel_calls.call_count == 0


def test_double_backward_through_the_kernel_uses_the_differentiable_composite(seed):
    x = torch.randn(4, 8, generator=seed, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, generator=seed, dtype=torch.float64, requires_grad=True)
    gx_ours, gw_ours = torch.autograd.grad(F.rms_norm(x, (8,), w).pow(3).sum(), (x, w),
                                           create_graph=True)  # fmt: skip
    gx_ref, gw_ref = torch.autograd.grad(TF.rms_norm(x, (8,), w).pow(3).sum(), (x, w),
                                         create_graph=True)  # fmt: skip
    torch.testing.assert_close((gx_ours, gw_ours), (gx_ref, gw_ref), **TOL)
    second = torch.autograd.grad((gx_ours.sum() + gw_ours.square().sum()), (x, w))
    expected = torch.autograd.grad((gx_ref.sum() + gw_ref.square().sum()), (x, w))
    torch.testing.assert_close(second, expected, **TOL)


def test_custom_ops_pass_torch_opcheck(seed):
    x = torch.randn(3, 5, 8, generator=seed, requires_grad=True)
    w = torch.randn(8, generator=seed, requires_grad=True)
    r = torch.randn(3, 5, 8, generator=seed, requires_grad=True)
    torch.library.opcheck(rms_module._rms_norm_op, (x, w, 8, 1e-6))
    torch.library.opcheck(rms_module._rms_norm_op, (x, None, 8, 1e-6))
    torch.library.opcheck(rms_module._add_rms_norm_op, (x, r, w, 8, 1e-6))


def test_custom_op_vmap_rule_matches_torch(seed):
    x = torch.randn(5, 3, 8, generator=seed, dtype=torch.float64)
    w = torch.randn(8, generator=seed, dtype=torch.float64)
    ws = torch.randn(5, 8, generator=seed, dtype=torch.float64)

    def op(t: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        return torch.ops.traintech.rms_norm(t, weight, 8, 1e-6)[0]

    expected = TF.rms_norm(x, (8,), w, eps=1e-6)
    torch.testing.assert_close(vmap(op, in_dims=(0, None))(x, w), expected, **TOL)
    torch.testing.assert_close(vmap(op, in_dims=(1, None), out_dims=1)(x, w), expected, **TOL)
    no_weight = vmap(op, in_dims=(0, None))(x, None)
    torch.testing.assert_close(no_weight, TF.rms_norm(x, (8,), eps=1e-6), **TOL)
    per_weight = vmap(op, in_dims=(0, 0))(x, ws)
    torch.testing.assert_close(per_weight, TF.rms_norm(x, (8,), eps=1e-6) * ws[:, None], **TOL)
    broadcast = vmap(lambda weight: op(x[0], weight))(ws)
    torch.testing.assert_close(broadcast, TF.rms_norm(x[0], (8,), eps=1e-6) * ws[:, None], **TOL)


# --------------------------------------------------------------------------- fused add + norm


@pytest.mark.parametrize("layout", ["permuted", "strided", "contiguous"])
def test_fused_add_rms_norm_on_non_contiguous_inputs_matches_torch(layout, seed, kernel_calls):
    def make() -> torch.Tensor:
        if layout == "permuted":
            return torch.randn(16, 5, 3, generator=seed, dtype=torch.float64).permute(2, 1, 0)
        if layout == "strided":
            return torch.randn(3, 5, 32, generator=seed, dtype=torch.float64)[..., ::2]
        return torch.randn(3, 5, 16, generator=seed, dtype=torch.float64)

    x, r = make().requires_grad_(), make().requires_grad_()
    w = torch.randn(16, generator=seed, dtype=torch.float64, requires_grad=True)
    y, h = F.fused_add_rms_norm(x, r, (16,), w, eps=1e-6)
    assert kernel_calls.call_count == 1
    x2, r2, w2 = (t.detach().clone().requires_grad_() for t in (x, r, w))
    h2 = x2 + r2
    y2 = TF.rms_norm(h2, (16,), w2, eps=1e-6)
    torch.testing.assert_close((y, h), (y2, h2), **TOL)
    gy = torch.randn(y.shape, generator=seed, dtype=torch.float64)
    gh = torch.randn(y.shape, generator=seed, dtype=torch.float64)
    torch.autograd.backward((y, h), (gy, gh))
    torch.autograd.backward((y2, h2), (gy, gh))
    torch.testing.assert_close((x.grad, r.grad, w.grad), (x2.grad, r2.grad, w2.grad), **TOL)


def test_fx_symbolic_trace_of_every_functional_matches_torch(seed):
    x = torch.randn(4, 6, 5, generator=seed, dtype=torch.float64)
    w = torch.randn(6, generator=seed, dtype=torch.float64)
    rm, rv = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)

    class Model(nn.Module):
        def __init__(self, lib: Any) -> None:
            super().__init__()
            self.lib = lib

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            lib = self.lib
            y = lib.batch_norm(x, rm.clone(), rv.clone(), w, None, training=True)
            y = y + lib.instance_norm(x, weight=w)
            y = y + lib.group_norm(x, 3, w)
            y = y + lib.layer_norm(x, (5,))
            return y + lib.rms_norm(x, (5,), eps=1e-6)

    gm = torch.fx.symbolic_trace(Model(F))
    torch.testing.assert_close(gm(x), Model(TF)(x), **TOL)


# ------------------------------------------------------------- layers without a namesake

_R = torch.linspace(-2, 2, 2 * 3 * 8, dtype=torch.float64).view(2, 3, 8)


class _OursAddRMS(tn.FusedAddRMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y, h = super().forward(x, _R)
        return y + h


class _TorchAddRMS(nn.RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + _R
        return super().forward(h) + h


class _OursAddLN(tn.FusedAddLayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y, h = super().forward(x, _R)
        return y * h


class _TorchAddLN(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + _R
        return super().forward(h) * h


class _FrozenTorchBN(nn.BatchNorm2d):
    """torch's BatchNorm2d held in eval mode: what FrozenBatchNorm2d computes in either mode."""

    def train(self, mode: bool = True) -> _FrozenTorchBN:
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # no shape check: FX traces it
        return TF.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                             False, 0.0, self.eps)  # fmt: skip


class _TorchChannelLN(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        moved = TF.layer_norm(x.movedim(1, -1), (x.shape[1],), self.weight, self.bias, 1e-5)
        return moved.movedim(-1, 1)


#: (id, ours, torch's equivalent, input shape): same state_dict keys (Frozen: BN's minus counter).
EXTRAS: list[tuple[str, Callable[[], nn.Module], Callable[[], nn.Module], tuple[int, ...]]] = [
    ("fused_add_rms", lambda: _OursAddRMS(8, eps=1e-6), lambda: _TorchAddRMS(8, eps=1e-6),
     (2, 3, 8)),
    ("fused_add_ln", lambda: _OursAddLN(8), lambda: _TorchAddLN(8), (2, 3, 8)),
    ("sync_bn_one_process", lambda: tn.SyncBatchNorm(3), lambda: nn.BatchNorm2d(3), (4, 3, 2, 3)),
    ("ghost_bn_one_chunk", lambda: tn.GhostBatchNorm(3, 8), lambda: nn.BatchNorm2d(3),
     (4, 3, 2, 3)),
    ("frozen_bn", lambda: tn.FrozenBatchNorm2d(3), lambda: _FrozenTorchBN(3),
     (4, 3, 2, 3)),
    ("channel_ln", lambda: tn.ChannelLayerNorm(3), lambda: _TorchChannelLN(3), (2, 3, 4, 2)),
]  # fmt: skip


def _extra_pair(row: tuple[Any, ...]) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    _, ours_f, theirs_f, shape = row
    gen = torch.Generator().manual_seed(len(shape))
    theirs = theirs_f().double()
    randomize_norm_state(theirs, gen, torch.float64)
    ours = ours_f().double()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs, torch.randn(shape, generator=gen, dtype=torch.float64) + 0.5


@pytest.mark.parametrize("row", EXTRAS, ids=[r[0] for r in EXTRAS])
def test_layers_without_a_namesake_work_under_torch_func_fx_export_and_double_backward(row):
    ours, theirs, x = _extra_pair(row)

    def input_grad_of_grad(m: nn.Module) -> torch.Tensor:
        xg = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(m(xg).pow(3).sum(), xg, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), xg)[0]

    def functorch_all(m: nn.Module) -> tuple[Any, ...]:
        gx = grad(lambda t: m(t).pow(3).sum())(x)
        _, tangent = jvp(m, (x,), (torch.ones_like(x),))
        jac = jacrev(m)(x)
        return gx, tangent, jac

    def traced(m: nn.Module) -> torch.Tensor:
        return torch.fx.symbolic_trace(_Wrap(m))(x)

    def exported(m: nn.Module) -> torch.Tensor:
        return torch.export.export(_Wrap(m), (x,)).module()(x)

    for fn in (input_grad_of_grad, functorch_all, traced, exported):
        # BatchNorm in training under jvp/jacrev raises in torch too (in-place running-stat
        # update with a dual/batched value): each check must run in at least one mode
        compared = [_side_by_side(fn, ours.train(t), theirs.train(t)) for t in (True, False)]
        assert any(compared), fn.__name__
    xi = x.clone().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda t: copy.deepcopy(ours)(t), (xi,))


def test_ghost_batchnorm_traced_by_fx_in_training_mode_splits_at_run_time(seed):
    layer = tn.GhostBatchNorm(3, 2)
    gm = torch.fx.symbolic_trace(_Wrap(copy.deepcopy(layer)))
    for batch in (4, 5, 6):  # the virtual batches follow each call's batch size
        x = torch.randn(batch, 3, generator=seed)
        torch.testing.assert_close(gm(x), _Wrap(layer)(x))
    torch.testing.assert_close(gm.layer.running_mean, layer.running_mean)
