"""Find the activation after each weight layer: from the torch.fx graph, or from module order.

``find_followers`` traces the model with ``torch.fx`` (activations, dropout, pooling and norm
layers are kept as leaves). Weight layers that are graph nodes are followed through the graph's
users; weight layers hidden inside a leaf module (e.g. the Linears of an
``nn.TransformerEncoderLayer``, which torch.fx cannot trace) and every layer when tracing fails
are resolved from module registration order: the next module after the layer, skipping
transparent ones. Torch's Transformer layers get their ``activation`` attribute (often a plain
function, so not a module at all) read directly.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from torch import nn

from ._activations import Activation, classify_function, classify_module
from ._trace import OUTPUT, Summary, analyse, is_weight_layer

__all__ = ["Followers", "find_followers", "is_weight_layer"]


@dataclass
class Followers:
    """What follows each weight layer (by qualified name), how it was found, and layer order."""

    activation: dict[str, Activation]
    how: dict[str, str]
    order: list[str]
    method: str


def find_followers(model: nn.Module, use_fx: bool = True) -> Followers:
    """Map each weight layer's qualified name to the activation that follows it."""
    modules = dict(model.named_modules())
    result = Followers({}, {}, [], "module order (fx disabled)")
    if use_fx:
        cache: dict[Hashable, Summary | None] = {}
        try:
            summary = analyse(model, cache)
        except Exception as exc:  # torch.fx raises many types on untraceable code
            result.method = f"module order (torch.fx could not trace: {type(exc).__name__})"
        else:
            result.method = "fx"
            for name, acts in summary.inner.items():
                final = [
                    Activation("none", 0.0, "model output") if a == OUTPUT else a for a in acts
                ]
                result.activation[name] = _merge(list(dict.fromkeys(final)))
                result.how[name] = "fx graph"
                result.order.append(name)
    _order_fallback(model, modules, result)
    return result


def _merge(found: list[Activation]) -> Activation:
    kinds = {(a.family, a.slope) for a in found}
    if len(kinds) == 1:
        return found[0]
    families = sorted({a.family for a in found})
    return Activation("none", 0.0, "mixed consumers: " + ", ".join(families))


def _order_fallback(model: nn.Module, modules: dict[str, nn.Module], result: Followers) -> None:
    known: dict[str, Activation] = {}
    for name, module in modules.items():
        if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
            prefix = f"{name}." if name else ""
            known[prefix + "linear1"] = _transformer_activation(module, name)
            known[prefix + "linear2"] = Activation("none", 0.0, "residual add")
        if isinstance(module, nn.MultiheadAttention):
            prefix = f"{name}." if name else ""
            known[prefix + "out_proj"] = Activation("none", 0.0, "attention output")
    atoms = [
        (name, m)
        for name, m in modules.items()
        if is_weight_layer(m) or not any(True for _ in m.children())
    ]
    for index, (name, module) in enumerate(atoms):
        if not is_weight_layer(module) or name in result.activation:
            continue
        result.order.append(name)
        if name in known:
            result.activation[name] = known[name]
            result.how[name] = "layer definition"
            continue
        result.how[name] = "module order"
        result.activation[name] = Activation("none", 0.0, "last module")
        for next_name, next_module in atoms[index + 1 :]:
            kind = classify_module(next_module, next_name)
            if kind is not None and kind.family == "transparent":
                continue
            if kind is None:
                kind = Activation("none", 0.0, f"next is '{next_name}'")
            result.activation[name] = kind
            break


def _transformer_activation(layer: nn.Module, name: str) -> Activation:
    act = getattr(layer, "activation", None)
    if isinstance(act, nn.Module):
        kind = classify_module(act, f"{name}.activation")
    else:
        kind = classify_function(act, (), {}) if act is not None else None
    if kind is None or kind.family == "transparent":
        return Activation("none", 0.0, "unknown activation")
    return kind
