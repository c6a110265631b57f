"""Per-layer clipping: each tensor or module to its own bound."""

import copy
import math

import pytest
import torch
from torch import nn

from traintech.clip import clip_grad_norm_per_layer_

from _helpers import assert_close_to_f64


def _model(gen):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * 3
    return model


def _norm(t, p=2.0):
    t = t.double().flatten()
    return t.abs().max() if math.isinf(p) else t.abs().pow(p).sum().pow(1 / p)


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_per_tensor_each_clipped_to_its_bound(p, seed):
    model = _model(seed)
    before = {n: q.grad.double().clone() for n, q in model.named_parameters()}
    norms = clip_grad_norm_per_layer_(model, max_norm=1.0, norm_type=p)
    assert list(norms) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for name, q in model.named_parameters():
        ref = _norm(before[name], p)
        assert_close_to_f64(norms[name], ref, dtype=torch.float32)
        coef = min(1.0, 1.0 / (float(ref) + 1e-6))
        assert_close_to_f64(q.grad, before[name] * coef, dtype=torch.float32)


def test_by_module_groups_weight_and_bias(seed):
    model = _model(seed)
    before = {n: q.grad.double().clone() for n, q in model.named_parameters()}
    norms = clip_grad_norm_per_layer_(model.named_parameters(), max_norm=0.5, by="module")
    assert list(norms) == ["0", "2"]
    for mod in ["0", "2"]:
        w, b = before[f"{mod}.weight"], before[f"{mod}.bias"]
        ref = torch.cat([w.flatten(), b.flatten()]).norm()
        assert_close_to_f64(norms[mod], ref, dtype=torch.float32)
        coef = min(1.0, 0.5 / (float(ref) + 1e-6))
        got = dict(model.named_parameters())
        assert_close_to_f64(got[f"{mod}.weight"].grad, w * coef, dtype=torch.float32)
        assert_close_to_f64(got[f"{mod}.bias"].grad, b * coef, dtype=torch.float32)


def test_mapping_bounds_and_missing_layers_untouched(seed):
    model = _model(seed)
    named = dict(model.named_parameters())
    keep = named["2.bias"].grad.clone()
    before = named["0.weight"].grad.double().clone()
    norms = clip_grad_norm_per_layer_(named, max_norm={"0.weight": 0.1, "0.bias": 100.0})
    assert torch.equal(named["2.bias"].grad, keep)
    assert_close_to_f64(_norm(named["0.weight"].grad), torch.tensor(0.1), dtype=torch.float32)
    assert_close_to_f64(norms["0.weight"], _norm(before), dtype=torch.float32)


def test_many_small_tensors_match_loop(seed):
    pairs = []
    for i in range(300):
        w = torch.zeros(7, requires_grad=True)
        w.grad = torch.randn(7, generator=seed)
        pairs.append((f"p{i}", w))
    before = [w.grad.double().clone() for _, w in pairs]
    norms = clip_grad_norm_per_layer_(pairs, max_norm=1.5)
    for (name, w), g0 in zip(pairs, before, strict=True):
        ref = g0.norm()
        assert_close_to_f64(norms[name], ref, dtype=torch.float32)
        assert_close_to_f64(w.grad, g0 * min(1.0, 1.5 / (float(ref) + 1e-6)), dtype=torch.float32)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"max_norm": -1.0}, ValueError, "max_norm"),
        ({"max_norm": {"0.weight": float("nan")}}, ValueError, "max_norm"),
        ({"max_norm": 1.0, "norm_type": "2"}, TypeError, "norm_type"),
        ({"max_norm": 1.0, "by": "layer"}, ValueError, "by"),
    ],
)
def test_bad_input(kwargs, exc, match, seed):
    with pytest.raises(exc, match=match):
        clip_grad_norm_per_layer_(_model(seed), **kwargs)


def test_bad_named_parameters_type():
    with pytest.raises(TypeError, match="named_parameters"):
        clip_grad_norm_per_layer_([torch.zeros(2)], 1.0)
    with pytest.raises(TypeError, match="named_parameters"):
        clip_grad_norm_per_layer_(torch.zeros(2), 1.0)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize("p", [2.0, math.inf])
@pytest.mark.parametrize("by", ["tensor", "module"])
def test_inf_norm_and_an_empty_parameter_match_torch_per_tensor(p, by, seed):
    # An empty parameter (e.g. a zero-width layer) must neither raise nor disturb the others:
    # each layer ends as torch's clip_grad_norm_ leaves it, applied to that layer alone.
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 4), torch.nn.Linear(4, 0), torch.nn.Linear(0, 3)
    )
    for param in model.parameters():
        param.grad = torch.randn(param.shape, generator=seed) * 3
    theirs = copy.deepcopy(model)
    for mine, twin in zip(model.parameters(), theirs.parameters(), strict=True):
        twin.grad = mine.grad.clone()
    norms = clip_grad_norm_per_layer_(model, 0.5, norm_type=p, by=by)
    layers = (
        [[q] for q in theirs.parameters()]
        if by == "tensor"
        else [list(m.parameters()) for m in theirs]
    )
    expected = []
    for layer in layers:
        nonempty = [q for q in layer if q.numel() > 0]
        expected.append(
            torch.nn.utils.clip_grad_norm_(nonempty, 0.5, norm_type=p)
            if nonempty
            else torch.zeros(())
        )
    assert len(norms) == len(expected)
    for got, want in zip(norms.values(), expected, strict=True):
        torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-6, atol=0)
    for ours, ref in zip(model.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-6, atol=0)


def test_bounds_mapping_with_several_values_and_inf(seed):
    # Layers sharing a bound are scaled together; an infinite or missing bound leaves a layer
    # bit for bit untouched.
    grads = {n: torch.randn(5, generator=seed) * 4 for n in "abcd"}
    params = {}
    for name, g in grads.items():
        params[name] = torch.zeros(5, requires_grad=True)
        params[name].grad = g.clone()
    bounds = {"a": 1.0, "b": 2.0, "c": math.inf}
    norms = clip_grad_norm_per_layer_(params, bounds)
    for name, g in grads.items():
        bound = bounds.get(name, math.inf)
        ref = g.double() * min(1.0, bound / (g.double().norm().item() + 1e-6))
        torch.testing.assert_close(norms[name].double(), g.double().norm(), rtol=1e-6, atol=0)
        if math.isinf(bound):
            assert torch.equal(params[name].grad, g)
        else:
            torch.testing.assert_close(params[name].grad.double(), ref, rtol=1e-6, atol=0)
