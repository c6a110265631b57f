"""What follows each weight layer in the torch.fx graph, tracing each repeated block only once.

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

from traintech._compat import ConvNd

from ._activations import Activation, classify_function, classify_module

__all__ = ["OUTPUT", "Summary", "analyse", "is_weight_layer"]

_WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Bilinear, ConvNd)
_MAX_DEPTH = 64

#: Marker: the value reaches the traced module's output.
OUTPUT = Activation("output", 0.0, "block output")


def is_weight_layer(module: nn.Module) -> bool:
    """Linear, Bilinear and (transposed) convolutions: the layers whose init follows activation."""
    return isinstance(module, _WEIGHT_LAYERS)


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
