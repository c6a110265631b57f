"""Planning :func:`init_model`: which rule covers each parameter, and the init it gets.

One pass over ``model.named_modules()``. Each parameter is planned once, by its *owner*: the
module that holds it (for a tied parameter, the module whose init wins, see
:func:`owners`). A parameter is covered, in this order, by a ``scheme`` name key that matches its
qualified name but not its module's, a key that matches its module (type or name), or the
``"auto"`` rules:
weight layers by the activation after them (:mod:`._rules`), recurrent layers by their recipe
(:mod:`._recipes`), biases zero, norm layers 1/0, embeddings, PReLU, MultiheadAttention.
Parameters no rule covers fall back to the module's own ``reset_parameters()`` or stay
untouched; the report marks them (:data:`UNCOVERED`) and ``init_model`` warns.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from typing import Any, Union

import torch
from torch import Tensor, nn

from ._activations import Activation, is_norm_module
from ._followers import Followers, is_weight_layer
from ._recipes import is_recurrent, plan_recurrent
from ._report import Action, InitRecord
from ._rules import (
    FAN_INITS,
    apply_fill,
    choose_weight_init,
    embedding_normal,
    named_init,
    noop,
    wrap_callable,
    zero,
)
from ._rules import fill as fill_value
from ._xavier_kaiming import xavier_normal_, xavier_std, xavier_uniform_

__all__ = ["UNCOVERED", "SchemeKey", "SchemeValue", "key_matches", "owners", "plan"]

SchemeKey = Union[str, type]  # noqa: UP007 (runtime alias on Python 3.10)
SchemeValue = Union[str, Callable[..., Any]]  # noqa: UP007

#: Marker at the start of a record's reason when no rule covers the parameter.
UNCOVERED = "no rule for"

_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


def key_matches(key: SchemeKey, name: str, module: nn.Module | None = None) -> bool:
    """Whether a ``scheme`` key matches a module (type or name) or, without module, a name."""
    if isinstance(key, type):
        return module is not None and isinstance(module, key)
    if key.startswith("re:"):
        return re.fullmatch(key[3:], name) is not None
    return fnmatch.fnmatchcase(name, key)


def owners(
    model: nn.Module, rules: Mapping[SchemeKey, SchemeValue] | None = None
) -> dict[int, tuple[str, str, list[str]]]:
    r"""For each parameter (by id): the module that plans it, its name there, and all its names.

    A parameter shared by several modules (tied weights: GPT-2's ``lm_head.weight is
    wte.weight``) is planned by the first owner that a ``scheme`` key names (by the parameter's
    name or the module's type or name), so an explicit rule is never overridden by the tie;
    else by its first owner that is not an embedding, so the output layer's init wins over the
    embedding's :math:`\mathcal{N}(0, 1)`; else by its first owner in module order.
    """
    found: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for pname, param in module.named_parameters(recurse=False):
            found.setdefault(id(param), []).append((name, module, prefix + pname))
    out: dict[int, tuple[str, str, list[str]]] = {}
    keys = list(rules or {})
    for pid, entries in found.items():
        named = [
            e
            for e in entries
            if any(key_matches(k, e[0], e[1]) or _param_key(k, e[2], e[0]) for k in keys)
        ]
        plain = [e for e in entries if not isinstance(e[1], _EMBEDDINGS)]
        chosen = (named or plain or entries)[0]
        out[pid] = (chosen[0], chosen[2], [e[2] for e in entries])
    return out


def plan(
    model: nn.Module,
    scheme: str | Mapping[SchemeKey, SchemeValue],
    generator: torch.Generator | None,
    distribution: str,
    followers: Followers,
) -> list[Action]:
    """One :data:`Action` per parameter (and per norm layer's running statistics)."""
    rules = {} if isinstance(scheme, str) else scheme
    owner = owners(model, rules)
    actions: list[Action] = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        params: list[tuple[str, str, Tensor]] = []
        for pname, param in module.named_parameters(recurse=False):
            planner, planned_as, _ = owner[id(param)]
            if planner == name and planned_as == prefix + pname:
                params.append((pname, prefix + pname, param))
        has_stats = hasattr(module, "reset_running_stats")
        if not params and not has_stats:
            continue
        act = followers.activation.get(name)
        by_param: list[Action] = []
        rest: list[tuple[str, str, Tensor]] = []
        for entry in params:
            key = next((k for k in rules if _param_key(k, entry[1], name)), None)
            if not isinstance(key, str) or rules[key] == "auto":
                rest.append(entry)
            else:
                by_param += _plan_rule(module, [entry], (key, rules[key]), act, generator, True)
        rule = _match(rules, name, module)
        if rule is None or rule[1] == "auto":
            how = followers.how.get(name, "")
            why = f"matched {rule[0]!r}: " if rule is not None else ""
            planned = _plan_auto(module, name, rest, act, how, why, generator, distribution)
        else:
            planned = _plan_rule(module, rest, rule, act, generator, False)
        # parameter keys run last, so a module-wide reset_parameters() cannot undo them
        actions += _mark_tied(planned + by_param, owner, params)
    return actions


def _param_key(key: SchemeKey, full: str, module_name: str) -> bool:
    # A name key covers a parameter alone when it matches the parameter's name but not its
    # module's ("head.weight", "*.weight"); "blocks.*" matches the modules and stays theirs.
    return (
        isinstance(key, str)
        and key_matches(key, full)
        and not (module_name and key_matches(key, module_name))
    )


def _mark_tied(
    actions: list[Action],
    owner: dict[int, tuple[str, str, list[str]]],
    params: list[tuple[str, str, Tensor]],
) -> list[Action]:
    tied = {full: owner[id(p)][2] for _, full, p in params if len(owner[id(p)][2]) > 1}
    out: list[Action] = []
    for record, run in actions:
        names = tied.get(record.name)
        if names:
            others = ", ".join(repr(n) for n in names if n != record.name)
            reason = f"{record.reason}; tied with {others} (planned once, by this module)"
            aliases = tuple(n for n in names if n != record.name)
            record = InitRecord(record.name, record.shape, record.init, reason, record.std, aliases)
        out.append((record, run))
    return out


def _match(
    scheme: Mapping[SchemeKey, SchemeValue], name: str, module: nn.Module
) -> tuple[str, SchemeValue] | None:
    for key, value in scheme.items():
        if key_matches(key, name, module):
            return (key.__name__ if isinstance(key, type) else key), value
    return None


def _plan_rule(
    module: nn.Module,
    params: list[tuple[str, str, Tensor]],
    rule: tuple[str, SchemeValue],
    act: Activation | None,
    generator: torch.Generator | None,
    exact: bool,
) -> list[Action]:
    key, value = rule
    why = f"scheme[{key!r}]"
    if value == "skip":
        return [(InitRecord(f, tuple(p.shape), "untouched", why), noop) for _, f, p in params]
    if value == "reset_parameters":
        reset = getattr(module, "reset_parameters", None)
        if exact:
            raise ValueError(
                f"{why} = 'reset_parameters' matches the parameter {params[0][1]!r}, but a "
                f"module's reset re-initialises all its parameters; use a module key"
            )
        if not callable(reset):
            raise ValueError(f"{why} = 'reset_parameters' but {type(module).__name__} has none")
        records = [InitRecord(f, tuple(p.shape), "reset_parameters()", why) for _, f, p in params]
        if not records:
            return []
        return [(r, noop) for r in records[:-1]] + [(records[-1], reset)]
    actions: list[Action] = []
    for pname, full, param in params:
        shape = tuple(param.shape)
        if "bias" in pname and not exact:
            actions.append((InitRecord(full, shape, "zeros", f"bias; {why}", 0.0), zero(param)))
            continue
        if isinstance(value, str):
            if value in FAN_INITS and param.dim() < 2:
                raise ValueError(
                    f"{why} = {value!r} needs fans, but parameter {full!r} has shape {shape}"
                )
            label, std, fill = named_init(value, param, module, act, generator)
        else:
            label, std = getattr(value, "__name__", repr(value)), None
            fill = wrap_callable(value, generator)
        actions.append((InitRecord(full, shape, label, why, std), apply_fill(fill, param)))
    return actions


def _plan_auto(
    module: nn.Module,
    name: str,
    params: list[tuple[str, str, Tensor]],
    act: Activation | None,
    how: str,
    why: str,
    generator: torch.Generator | None,
    distribution: str,
) -> list[Action]:
    kind = type(module).__name__
    if is_recurrent(module):
        return plan_recurrent(module, params, generator, distribution)
    actions: list[Action] = []
    if is_norm_module(module) and hasattr(module, "reset_running_stats"):
        reset_stats: Callable[[], None] = getattr(module, "reset_running_stats")  # noqa: B009
        actions.append(
            (
                InitRecord(
                    f"{name}.running_*" if name else "running_*",
                    (),
                    "reset",
                    f"{why}{kind} running statistics",
                ),
                reset_stats,
            )
        )
    for pname, full, param in params:
        shape = tuple(param.shape)
        if "bias" in pname and not isinstance(module, nn.MultiheadAttention):
            actions.append(
                (InitRecord(full, shape, "zeros", f"{why}{kind} bias", 0.0), zero(param))
            )
        elif is_weight_layer(module) and pname == "weight":
            found = act or Activation("none")
            label, std, fill = choose_weight_init(found, distribution, param, module, generator)
            reason = f"{why}{kind}, {found.describe()}" + (f" ({how})" if how else "")
            actions.append((InitRecord(full, shape, label, reason, std), apply_fill(fill, param)))
        elif is_norm_module(module):
            value = 1.0 if pname == "weight" else 0.0
            label = "ones" if value else "zeros"
            actions.append(
                (
                    InitRecord(full, shape, label, f"{why}{kind} {pname}", 0.0),
                    fill_value(param, value),
                )
            )
        elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            actions.append(
                (
                    InitRecord(full, shape, "normal(0, 1)", f"{why}{kind} (torch's default)", 1.0),
                    embedding_normal(module, param, generator),
                )
            )
        elif isinstance(module, nn.PReLU):
            actions.append(
                (
                    InitRecord(
                        full,
                        shape,
                        f"constant({module.init:g})",
                        f"{why}PReLU slope (its init value)",
                    ),
                    fill_value(param, float(module.init)),
                )
            )
        elif isinstance(module, nn.MultiheadAttention):
            actions.append(_plan_mha(module, pname, full, param, why, generator, distribution))
        else:
            actions.append(_plan_unknown(module, full, param, why))
    return _dedupe_reset(actions)


def _plan_mha(
    module: nn.MultiheadAttention,
    pname: str,
    full: str,
    param: Tensor,
    why: str,
    generator: torch.Generator | None,
    distribution: str,
) -> Action:
    shape = tuple(param.shape)
    xavier = xavier_uniform_ if distribution == "uniform" else xavier_normal_
    if "bias" in pname and pname in ("in_proj_bias",):
        return InitRecord(full, shape, "zeros", f"{why}MultiheadAttention bias", 0.0), zero(param)
    if pname == "in_proj_weight":
        block = param.chunk(3, 0)[0]
        record = InitRecord(
            full,
            shape,
            f"xavier_{distribution} per q/k/v block",
            f"{why}MultiheadAttention input projection",
            xavier_std(block),
        )

        def run() -> None:
            for b in param.chunk(3, 0):
                xavier(b, generator=generator)

        return record, run
    if pname in ("bias_k", "bias_v"):
        return (
            InitRecord(
                full,
                shape,
                "xavier_normal",
                f"{why}MultiheadAttention {pname} (as torch)",
                xavier_std(param),
            ),
            apply_fill(lambda t: xavier_normal_(t, generator=generator), param),
        )
    record = InitRecord(
        full, shape, f"xavier_{distribution}", f"{why}MultiheadAttention {pname}", xavier_std(param)
    )
    return record, apply_fill(lambda t: xavier(t, generator=generator), param)


def _plan_unknown(module: nn.Module, full: str, param: Tensor, why: str) -> Action:
    kind = type(module).__name__
    reset = getattr(module, "reset_parameters", None)
    if is_weight_layer(module):
        # e.g. an adapter parameter of a Linear subclass: its reset would undo the weight's init
        return InitRecord(
            full, tuple(param.shape), "untouched", f"{why}{UNCOVERED} extra {kind} parameter"
        ), noop
    if callable(reset):
        record = InitRecord(
            full,
            tuple(param.shape),
            "reset_parameters()",
            f"{why}{UNCOVERED} {kind}; its own reset_parameters() (global RNG)",
        )
        return record, reset
    return InitRecord(full, tuple(param.shape), "untouched", f"{why}{UNCOVERED} {kind}"), noop


def _dedupe_reset(actions: list[Action]) -> list[Action]:
    # A module's reset_parameters() re-inits all its parameters: run it once, not per parameter.
    seen = False
    out: list[Action] = []
    for record, run in actions:
        if record.init == "reset_parameters()":
            out.append((record, noop if seen else run))
            seen = True
        else:
            out.append((record, run))
    return out
