"""Every layer under torch's transforms and tracers, side by side with torch's namesake.

``torch.func`` (grad, vmap with per-sample gradients, jvp, jacrev), double backward
(``gradgradcheck``), ``torch.fx.symbolic_trace``, ``torch.export.export``, the meta device and
``torch.compile(fullgraph=True)``. Where torch has the layer, ours must give torch's values under
the same seed; elsewhere the float64 formula is the reference.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vmap

import traintech.dropout as D

P = 0.3
# name -> (factory(generator) -> layer, torch namesake factory or None, per-sample shape)
LAYERS: dict[str, tuple[Callable[..., nn.Module], Callable[[], nn.Module] | None, tuple]] = {
    "Dropout": (lambda g: D.Dropout(P, generator=g), lambda: nn.Dropout(P), (5, 6)),
    "Dropout1d": (lambda g: D.Dropout1d(P, generator=g), lambda: nn.Dropout1d(P), (5, 6)),
    "Dropout2d": (lambda g: D.Dropout2d(P, generator=g), lambda: nn.Dropout2d(P), (5, 3, 3)),
    "Dropout3d": (lambda g: D.Dropout3d(P, generator=g), lambda: nn.Dropout3d(P), (5, 2, 3, 3)),
    "AlphaDropout": (lambda g: D.AlphaDropout(P, generator=g), lambda: nn.AlphaDropout(P), (5, 6)),
    "FeatureAlphaDropout": (
        lambda g: D.FeatureAlphaDropout(P, generator=g),
        lambda: nn.FeatureAlphaDropout(P),
        (5, 3, 3),
    ),
    "DropPath": (lambda g: D.DropPath(P, generator=g), None, (5, 6)),
    "DropBlock2d": (lambda g: D.DropBlock2d(P, 2, generator=g), None, (5, 4, 4)),
    "DropConnect": (
        lambda g: D.DropConnect(nn.Linear(6, 6).double(), P, generator=g),
        None,
        (5, 6),
    ),
}
TORCH_NAMES = sorted(k for k, v in LAYERS.items() if v[1] is not None)
BATCH = 4


def _x(name: str, batch: int = BATCH) -> torch.Tensor:
    shape = LAYERS[name][2]
    if name in ("Dropout2d", "FeatureAlphaDropout", "DropBlock2d", "Dropout3d", "Dropout1d"):
        return torch.randn(batch, *shape, dtype=torch.float64)
    return torch.randn(batch, *shape, dtype=torch.float64)


def _fresh(name: str, with_gen: bool) -> nn.Module:
    layer = LAYERS[name][0](torch.Generator().manual_seed(7) if with_gen else None)
    return layer.double()


def _reset(layer: nn.Module) -> None:
    # same mask on every call: reseed the layer's generator or the global one
    if getattr(layer, "generator", None) is not None:
        layer.generator.manual_seed(7)
    torch.manual_seed(7)


# --- torch.func, side by side with torch's module --------------------------------------------


@pytest.mark.parametrize("name", TORCH_NAMES)
@pytest.mark.parametrize("randomness", ["different", "same"])
def test_vmap_same_as_torch(name: str, randomness: str) -> None:
    ours, ref = _fresh(name, False), LAYERS[name][1]()  # type: ignore[misc]
    x = _x(name)
    a, b = ((torch.manual_seed(1), vmap(m, randomness=randomness)(x))[1] for m in (ours, ref))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("with_gen", [False, True], ids=["global", "generator"])
def test_vmap_randomness(name: str, with_gen: bool) -> None:
    layer = _fresh(name, with_gen)
    x = torch.ones_like(_x(name)) + 1.0
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(layer, randomness="error")(x)
    if name == "DropConnect":  # one weight mask per call, shared by the batch: check it apart
        return
    same = vmap(layer, randomness="same")(x)
    assert all(torch.equal(same[0], same[i]) for i in range(1, BATCH))
    different = vmap(layer, randomness="different")(x)
    assert not all(torch.equal(different[0], different[i]) for i in range(1, BATCH))


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_per_sample_grads_same_as_torch(name: str) -> None:
    # per-sample gradients of a linear head after the dropout layer, via functional_call
    ours, ref = _fresh(name, False), LAYERS[name][1]()  # type: ignore[misc]
    x = _x(name)
    head = nn.Linear(x[0].numel(), 1).double()
    params = {k: v.detach() for k, v in head.named_parameters()}

    def loss(m: nn.Module) -> Callable[..., torch.Tensor]:
        def f(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
            return functional_call(head, p, (m(xi.unsqueeze(0)).flatten(),)).sum()

        return f

    results = []
    for m in (ours, ref):
        torch.manual_seed(3)
        results.append(vmap(grad(loss(m)), in_dims=(None, 0), randomness="different")(params, x))
    for k in params:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=0, atol=0)


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_grad_jvp_jacrev_same_as_torch(name: str) -> None:
    ours, ref = _fresh(name, False), LAYERS[name][1]()  # type: ignore[misc]
    x = _x(name, 2)
    t = torch.randn_like(x)
    outs = []
    outs_train: list[torch.Tensor] = []
    for m in (ours, ref):
        torch.manual_seed(5)
        g = grad(lambda v, m=m: (m(v) ** 2).sum())(x)
        torch.manual_seed(5)
        j = jvp(m, (x,), (t,))[1]
        torch.manual_seed(5)
        jr_train = jacrev(m)(x)  # training: one draw, its Jacobian is diagonal mask * scale
        outs_train.append(jr_train)
        m.eval()
        jr = jacrev(m)(x)
        m.train()
        outs.append((g, j, jr))
    for a, b in zip(outs[0], outs[1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(
        outs[0][2], torch.eye(x.numel(), dtype=x.dtype).view(*x.shape, *x.shape)
    )


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_grad_and_jvp_match_the_mask(name: str) -> None:
    # with a generator: grad/jvp equal autograd's of the same (reseeded) draw, in float64
    layer = _fresh(name, True)
    x = _x(name, 2)
    t = torch.randn_like(x)
    _reset(layer)
    g = grad(lambda v: (layer(v) * t).sum())(x)
    _reset(layer)
    j = jvp(layer, (x,), (t,))[1]
    _reset(layer)
    xr = x.clone().requires_grad_()
    y = layer(xr)
    (g_ref,) = torch.autograd.grad((y * t).sum(), xr)
    torch.testing.assert_close(g, g_ref, rtol=1e-14, atol=0)
    if name == "DropConnect":
        return
    _reset(layer)
    (j_ref,) = torch.autograd.functional.jvp(layer, (x,), (t,))[1:]
    torch.testing.assert_close(j, j_ref, rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("with_gen", [False, True], ids=["global", "generator"])
def test_gradgradcheck(name: str, with_gen: bool) -> None:
    layer = _fresh(name, with_gen)
    x = _x(name, 1).requires_grad_()

    def f(v: torch.Tensor) -> torch.Tensor:
        _reset(layer)
        return layer(v)

    assert torch.autograd.gradgradcheck(f, (x,))


# --- tracing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(set(LAYERS) - {"DropConnect"}))
def test_fx_symbolic_trace(name: str) -> None:
    layer = _fresh(name, True)
    model = nn.Sequential(nn.Identity(), layer)
    gm = torch.fx.symbolic_trace(model)
    x = _x(name)
    _reset(layer)
    a = gm(x)
    _reset(layer)
    torch.testing.assert_close(a, model(x), rtol=0, atol=0)
    assert any(n.op == "call_function" for n in gm.graph.nodes)  # the dropout call is recorded


def test_fx_drop_connect_needs_a_leaf() -> None:
    model = nn.Sequential(D.DropConnect(nn.Linear(6, 6), P))
    with pytest.raises(TypeError, match="is_leaf_module"):
        torch.fx.symbolic_trace(model)

    class Leaf(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, D.DropConnect) or super().is_leaf_module(m, qualname)

    graph = Leaf().trace(model)
    gm = torch.fx.GraphModule(model, graph)
    x = torch.randn(3, 6)
    torch.manual_seed(0)
    a = gm(x)
    torch.manual_seed(0)
    torch.testing.assert_close(a, model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_export(name: str) -> None:
    layer = _fresh(name, False)
    x = _x(name)
    ep = torch.export.export(layer, (x,))
    out = ep.module()(x)
    assert out.shape == layer(x).shape
    assert not torch.equal(out, x)  # training mode: randomness kept in the exported graph
    layer.eval()
    ep_eval = torch.export.export(layer, (x,))
    torch.testing.assert_close(ep_eval.module()(x), layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_meta_device(name: str) -> None:
    with torch.device("meta"):
        layer = _fresh(name, False)
    x = _x(name).to("meta")
    y = layer(x)
    assert y.device.type == "meta" and y.shape == layer.to_empty(device="cpu")(_x(name)).shape


@pytest.mark.slow
def test_compile_fullgraph_inductor_forward_backward() -> None:
    torch._dynamo.reset()
    model = nn.Sequential(
        nn.Linear(6, 6),
        D.Dropout(P),
        D.AlphaDropout(P),
        D.DropPath(P),
        D.DropConnect(nn.Linear(6, 6), P),
    )
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    x = torch.randn(16, 6, requires_grad=True)
    y = compiled(x)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    model.eval()
    torch.testing.assert_close(compiled(x), model(x))
    torch._dynamo.reset()


def test_compile_with_a_generator_graph_breaks() -> None:
    # dynamo cannot put a torch.Generator in a graph: fullgraph refuses, a graph break works
    layer = D.Dropout(P, generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    with pytest.raises(Exception, match="(?i)generator|unsupported|graph break"):
        torch.compile(layer, fullgraph=True, backend="eager")(torch.randn(8, 8))
    torch._dynamo.reset()
    x = torch.rand(8, 8).add_(0.5)
    y = torch.compile(layer, backend="eager")(x)
    keep = (y != 0).float()
    torch.testing.assert_close(y, x * keep / (1 - P))
    torch._dynamo.reset()
