"""Which activation follows each weight layer: from the torch.fx graph, or from module order.

``find_followers`` traces the model with ``torch.fx`` (activations, dropout, pooling and norm
layers are kept as leaves). Weight layers that are graph nodes are followed through the graph's
users; weight layers hidden inside a leaf module (e.g. the Linears of an
``nn.TransformerEncoderLayer``, which torch.fx cannot trace) and every layer when tracing fails
are resolved from module registration order: the next module after the layer, skipping
transparent ones. Torch's Transformer layers get their ``activation`` attribute (often a plain
function, so not a module at all) read directly.

Deep models repeat one block class many times (Transformer layers, ResNet stages). Tracing is
the expensive part of ``init_model``'s bookkeeping, so a block whose class, submodule layout and
plain configuration attributes (numbers, strings, flags, functions) equal another's is kept as a
leaf in the enclosing trace and traced once; its summary (what follows each inner layer, and
what follows the block's input) is reused for every instance. Where an inner layer's output
leaves the block, the summary says ``output`` and the walk continues after the block's node in
the enclosing graph.
"""

from __future__ import annotations

import types
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from functools import partial

from torch import Tensor, fx, nn

from .._compat import ConvNd
from ._activations import Activation, classify_function, classify_module
from ._fans_and_gain import is_conv1d_transposed_layout

__all__ = ["OUTPUT", "Followers", "Summary", "analyse", "find_followers", "is_weight_layer"]

_WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Bilinear, ConvNd)
_MAX_DEPTH = 64

#: Marker: the value reaches the traced module's output.
OUTPUT = Activation("output", 0.0, "block output")


def is_weight_layer(module: nn.Module) -> bool:
    """Linear, Bilinear, (transposed) convolutions and ``transformers``' ``Conv1D`` (a Linear).

    These are the layers whose weight init follows the activation after them.
    """
    return isinstance(module, _WEIGHT_LAYERS) or is_conv1d_transposed_layout(module)


@dataclass
class Summary:
    """Per weight layer (name relative to the traced module) what follows it, in graph order."""

    inner: dict[str, list[Activation]] = field(default_factory=dict)
    entry: list[Activation] = field(default_factory=list)


class _Tracer(fx.Tracer):
    def __init__(self, composite: set[int], autowrap: bool) -> None:
        # fx patches every ``math`` function anew on each trace, which costs more than the rest
        # of a small trace; it is only needed when ``math.*`` is called on a traced value.
        if autowrap:
            super().__init__()
        else:
            super().__init__(autowrap_modules=(), autowrap_functions=())  # type: ignore[arg-type]
        self.composite = composite

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if id(m) in self.composite or classify_module(m, module_qualified_name) is not None:
            return True
        if type(m).__module__.startswith("traintech."):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _plain(value: object) -> bool:
    if isinstance(
        value, (bool, int, float, str, type(None), types.FunctionType, types.BuiltinFunctionType)
    ):
        return True
    return isinstance(value, tuple) and all(_plain(v) for v in value)


def _attribute_key(name: str, value: object) -> Hashable:
    if _plain(value):
        return value
    if name.startswith("_") or isinstance(value, (nn.Module, Tensor)):
        return None  # torch's own bookkeeping; submodules and tensors are compared elsewhere
    # other configuration (lists, dicts, partials): by repr; an address in it only makes
    # blocks differ, which is safe (they are then traced separately)
    return repr(value)


def signature(module: nn.Module) -> Hashable:
    """Class, layout and configuration attributes of ``module`` and all its submodules."""
    parts = []
    for name, sub in module.named_modules():
        attrs = tuple(sorted((k, _attribute_key(k, v)) for k, v in vars(sub).items()))
        parts.append((name, type(sub), attrs))
    return tuple(parts)


def _has_weight_layer(module: nn.Module) -> bool:
    return any(is_weight_layer(m) for m in module.modules())


def _repeated_blocks(root: nn.Module) -> dict[int, Hashable]:
    """Outermost non-leaf submodules whose signature occurs at least twice (id -> signature)."""
    candidates: list[tuple[str, nn.Module, Hashable]] = []
    for name, module in root.named_modules():
        if not name or not any(True for _ in module.children()):
            continue
        torch_leaf = type(module).__module__.startswith("torch.nn")
        if not _has_weight_layer(module) or (torch_leaf and not isinstance(module, nn.Sequential)):
            continue
        candidates.append((name, module, signature(module)))
    counts = Counter(sig for _, _, sig in candidates)
    chosen: dict[int, Hashable] = {}
    chosen_names: list[str] = []
    for name, module, sig in candidates:
        if counts[sig] < 2 or any(name.startswith(p + ".") for p in chosen_names):
            continue
        chosen[id(module)] = sig
        chosen_names.append(name)
    return chosen


def analyse(module: nn.Module, cache: dict[Hashable, Summary | None]) -> Summary:
    """Trace ``module`` and summarise what follows each weight layer (raises if untraceable)."""
    composite = _repeated_blocks(module)
    try:
        graph = _Tracer(set(composite), autowrap=False).trace(module)
    except TypeError:  # e.g. math.sqrt(x.size(-1)): retry with fx's default autowrapping
        graph = _Tracer(set(composite), autowrap=True).trace(module)
    modules = dict(module.named_modules())
    memo: dict[fx.Node, list[Activation]] = {}

    def block_summary(block: nn.Module) -> Summary | None:
        key = composite[id(block)]
        if key not in cache:
            try:
                cache[key] = analyse(block, cache)
            except Exception:  # torch.fx raises many types on untraceable code
                cache[key] = None
        return cache[key]

    def follow(node: fx.Node, depth: int) -> list[Activation]:
        if node in memo:
            return memo[node]
        found: list[Activation] = []
        if not node.users:
            found.append(Activation("none", 0.0, "unused"))
        for user in node.users:
            if user.op == "output":
                found.append(OUTPUT)
                continue
            target = modules.get(str(user.target)) if user.op == "call_module" else None
            if target is not None and id(target) in composite:
                summary = block_summary(target)
                if summary is None:
                    found.append(Activation("none", 0.0, f"consumed by '{user.target}'"))
                else:
                    entry = [_qualify(x, str(user.target)) for x in summary.entry]
                    found.extend(_resolve(entry, partial(follow, user, depth + 1)))
                continue
            kind = _classify_node(user, modules)
            if kind is None:
                found.append(Activation("none", 0.0, _node_label(user)))
            elif kind.family != "transparent":
                found.append(kind)
            elif depth >= _MAX_DEPTH:
                found.append(Activation("none", 0.0, "search depth exceeded"))
            else:
                found.extend(follow(user, depth + 1))
        memo[node] = list(dict.fromkeys(found))
        return memo[node]

    summary = Summary()
    for node in graph.nodes:
        if node.op == "placeholder":
            summary.entry.extend(follow(node, 0))
        if node.op != "call_module" or str(node.target) not in modules:
            continue
        name = str(node.target)
        target = modules[name]
        if id(target) in composite:
            inner = block_summary(target)
            if inner is None:
                continue
            for rel, acts in inner.inner.items():
                qualified = [_qualify(x, name) for x in acts]
                resolved = _resolve(qualified, partial(follow, node, 1))
                summary.inner.setdefault(f"{name}.{rel}", []).extend(resolved)
        elif is_weight_layer(target):
            summary.inner.setdefault(name, []).extend(follow(node, 0))
    summary.entry = list(dict.fromkeys(summary.entry))
    return summary


def _qualify(act: Activation, prefix: str) -> Activation:
    """Prefix the module name quoted in ``act.source`` (names in a summary are block-relative)."""
    head, quote, rest = act.source.partition("'")
    if act == OUTPUT or not quote:
        return act
    return replace(act, source=f"{head}'{prefix}.{rest}")


def _resolve(acts: list[Activation], after: Callable[[], list[Activation]]) -> list[Activation]:
    out: list[Activation] = []
    for act in acts:
        if act == OUTPUT:
            out.extend(after())
        else:
            out.append(act)
    return out


def _classify_node(node: fx.Node, modules: dict[str, nn.Module]) -> Activation | None:
    if node.op == "call_module":
        module = modules.get(str(node.target))
        return None if module is None else classify_module(module, str(node.target))
    if node.op in ("call_function", "call_method"):
        return classify_function(node.target, tuple(node.args), dict(node.kwargs))
    return None


def _node_label(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"consumed by '{node.target}'"
    target = node.target
    return f"consumed by {getattr(target, '__name__', target)}()"


# --- the public entry: fx first, module order for what fx could not see ---


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
        known.update(_two_layer_mlp(module, name))
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


_MLP_ACT_NAMES = ("act", "activation", "act_fn", "activation_fn")


def _two_layer_mlp(module: nn.Module, name: str) -> dict[str, Activation]:
    """An MLP block ``fc_out(act(fc_in(x)))`` read from its attributes, not registration order.

    Hugging Face blocks (GPT-2's ``GPT2MLP``: ``c_fc``, ``c_proj``, ``act``) register both
    projections before the activation, so module order would put the activation after the
    second one. A module with exactly two direct weight-layer children and an activation child
    (or function) named ``act``/``activation``/``act_fn``/``activation_fn`` is read as such a
    block: the first projection feeds the activation, the second the residual add.
    """
    layers = [n for n, child in module.named_children() if is_weight_layer(child)]
    act_name = next((a for a in _MLP_ACT_NAMES if getattr(module, a, None) is not None), None)
    if len(layers) != 2 or act_name is None:
        return {}
    prefix = f"{name}." if name else ""
    kind = _activation_of(getattr(module, act_name), prefix + act_name)
    if kind.family == "none":
        return {}
    return {prefix + layers[0]: kind, prefix + layers[1]: Activation("none", 0.0, "MLP output")}


def _transformer_activation(layer: nn.Module, name: str) -> Activation:
    return _activation_of(getattr(layer, "activation", None), f"{name}.activation")


def _activation_of(act: object, label: str) -> Activation:
    if isinstance(act, nn.Module):
        kind = classify_module(act, label)
    else:
        kind = classify_function(act, (), {}) if act is not None else None
    if kind is None or kind.family == "transparent":
        return Activation("none", 0.0, "unknown activation")
    return kind
