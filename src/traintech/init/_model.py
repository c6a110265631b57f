"""Whole-model initialisation: the init of each layer chosen from the activation after it."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

import torch
from torch import Tensor, nn

from traintech._compat import ConvNd

from ._activations import Activation, is_norm_module
from ._checks import check_generator_device
from ._graph import Followers, find_followers, is_weight_layer
from ._recurrent import Action, is_recurrent, plan_recurrent
from ._report import InitRecord, InitReport
from ._residual import add_residual_scale, resolve_residual
from ._rules import FAN_INITS, NAMED_INITS, choose_weight_init, named_init, wrap_callable
from ._thunks import apply_fill, embedding_normal, noop, zero
from ._thunks import fill as fill_value
from ._xavier import xavier_normal_, xavier_std, xavier_uniform_

__all__ = ["init_model"]

SchemeKey = Union[str, type]  # noqa: UP007 (runtime alias on Python 3.10)
SchemeValue = Union[str, Callable[..., Any]]  # noqa: UP007
_SPECIAL = ("auto", "skip", "reset_parameters")
_DISTRIBUTIONS = ("uniform", "normal")
_WEIGHT_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    ConvNd,
)


def init_model(
    model: nn.Module,
    scheme: str | Mapping[SchemeKey, SchemeValue] = "auto",
    generator: torch.Generator | None = None,
    *,
    residual: Iterable[str | nn.Module] | None = None,
    num_residual: int | None = None,
    distribution: str = "uniform",
    use_fx: bool = True,
) -> InitReport:
    r"""Initialise every parameter of ``model`` in place, choosing each init from the graph.

    ``scheme="auto"`` finds, for each Linear/Conv layer, the activation its output reaches
    (through dropout, pooling, reshapes, norm layers and residual additions) and picks the
    init that keeps the second moment of the signal (He et al. 2015,
    https://arxiv.org/abs/1502.01852 ; Glorot & Bengio 2010; Klambauer et al. 2017,
    https://arxiv.org/abs/1706.02515 ):

    .. math::
        \operatorname{Var}(w) = \begin{cases}
            \frac{2}{(1 + a^2)\,\text{fan\_in}} & \text{ReLU family, leaky slope } a \\
            \frac{1}{\text{fan\_in}} & \text{SELU} \\
            \frac{2}{\text{fan\_in} + \text{fan\_out}} & \text{tanh, sigmoid, no activation}
        \end{cases}

    with exact fans for grouped, strided and transposed convolutions
    (:func:`fan_in_and_fan_out` with ``module``). GELU, SiLU, Mish, ELU and Softplus count as
    ReLU family. Biases are zero; norm layers get weight 1, bias 0 and reset running stats;
    embeddings :math:`\mathcal{N}(0, 1)` (torch's choice; padding row zero); PReLU its ``init``
    value; ``nn.MultiheadAttention`` Xavier per q/k/v block; ``nn.RNN``/``LSTM``/``GRU`` (and
    cells) orthogonal recurrent and Xavier input weights per gate, zero biases but an LSTM forget
    gate with ``bias_ih + bias_hh = 1``. Other modules with parameters get their own
    ``reset_parameters()`` (which uses the global RNG) or are left untouched, as the report says.

    Residual scaling: each branch output layer named in ``residual`` (or the last Linear/Conv,
    in forward order, of each named block) is multiplied by :math:`1/\sqrt{N}` after its init,
    :math:`N` = ``num_residual`` or the number of branches, so that the sum of :math:`N`
    residual branches keeps unit variance at initialisation (GPT-2's
    :math:`1/\sqrt{2L}` for L blocks of two branches; Fixup, https://arxiv.org/abs/1901.09321 ,
    uses a depth exponent that depends on the branch depth instead).

    A mapping ``scheme`` gives control: keys are module types (``isinstance``) or name
    patterns (``fnmatch`` on the qualified module name, or a regular expression prefixed
    ``"re:"``, full match); the first matching key wins, unmatched modules use ``"auto"``.
    Values are ``"auto"``, ``"skip"``, ``"reset_parameters"``, a name from
    ``kaiming_uniform, kaiming_normal, xavier_uniform, xavier_normal, lecun_uniform,
    lecun_normal, orthogonal, normal, trunc_normal, zeros, ones`` or a callable
    ``fn(tensor[, generator=])``; a name or callable fills every non-bias parameter of the
    module and zeroes its biases.

    Meta device: on a meta model nothing is written and the report (``materialized=False``) is
    the plan. Materialise with ``model.to_empty(device="cpu")`` (storage uninitialised) and call
    ``init_model`` again: every parameter and the norm running stats are rewritten; other
    buffers are not. dtype and device of every tensor are kept.

    Args:
        model: the model.
        scheme: ``"auto"``, one init name (applied to every Linear/Conv/Bilinear weight, the
            rest ``"auto"``), or a mapping as above.
        generator: the torch Generator to sample from (default: the global one).
        residual: names or modules of residual branch output layers, or of blocks whose last
            weight layer is the branch output. Patterns are ``fnmatch`` patterns; a match inside
            another match is dropped.
        num_residual: ``N`` of the :math:`1/\sqrt N` scale (default: number of branches found).
        distribution: ``"uniform"`` (default, as torch's defaults) or ``"normal"``.
        use_fx: trace with torch.fx (default); False uses module order only.

    Returns:
        An :class:`InitReport`: per parameter, the init applied, the target std and the reason.

    Raises:
        TypeError: for a non-module ``model``, a bad ``generator``, or a bad ``scheme`` key/value.
        ValueError: for an unknown ``scheme``/``distribution`` name, a ``residual`` entry that
            matches no module, ``num_residual < 1``, or a fan-based init on a 1-d parameter.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> report = init_model(net, generator=torch.Generator().manual_seed(0))
        >>> [r.init for r in report]
        ['kaiming_uniform(a=0, fan_in, relu)', 'zeros', 'xavier_uniform', 'zeros']
    """
    _validate(model, scheme, generator, distribution, num_residual)
    if isinstance(scheme, str) and scheme != "auto":
        scheme = {layer: scheme for layer in _WEIGHT_LAYER_TYPES}
    followers = find_followers(model, use_fx=use_fx)
    outputs = resolve_residual(model, residual, followers)
    if num_residual is None:
        num_residual = len(outputs)
    actions = _plan(model, scheme, generator, distribution, followers)
    if outputs:
        actions = add_residual_scale(actions, model, outputs, num_residual)
    for _, run in actions:
        run()
    materialized = not any(t.is_meta for t in model.parameters())
    records = [r for r, _ in actions]
    buffers = [r for r in records if r.name.endswith("running_*")]
    params = [r for r in records if not r.name.endswith("running_*")]
    return InitReport(params, followers.method, materialized, buffers)


def _validate(
    model: object,
    scheme: object,
    generator: object,
    distribution: object,
    num_residual: object,
) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_generator_device(generator, list(model.parameters()))
    if distribution not in _DISTRIBUTIONS:
        raise ValueError(
            f"distribution must be one of {list(_DISTRIBUTIONS)}, got {distribution!r}"
        )
    if num_residual is not None and (
        isinstance(num_residual, bool) or not isinstance(num_residual, int) or num_residual < 1
    ):
        raise ValueError(f"num_residual must be an int >= 1 or None, got {num_residual!r}")
    if isinstance(scheme, str):
        if scheme != "auto" and scheme not in NAMED_INITS:
            raise ValueError(
                f"scheme must be 'auto', an init name from {sorted(NAMED_INITS)} (for every "
                f"Linear/Conv weight) or a mapping from module type / name pattern to an init, "
                f"got {scheme!r}"
            )
        return
    if not isinstance(scheme, Mapping):
        raise TypeError(f"scheme must be 'auto' or a Mapping, got {type(scheme).__name__}")
    for key, value in scheme.items():
        if not (isinstance(key, str) or (isinstance(key, type) and issubclass(key, nn.Module))):
            raise TypeError(f"scheme keys must be nn.Module types or name patterns, got {key!r}")
        if isinstance(key, str) and key.startswith("re:"):
            try:
                re.compile(key[3:])
            except re.error as exc:
                raise ValueError(
                    f"scheme key {key!r} is not a valid regular expression: {exc}"
                ) from exc
        if isinstance(value, str):
            if value not in _SPECIAL + NAMED_INITS:
                raise ValueError(
                    f"scheme[{key!r}] = {value!r} is not an init name; use one of "
                    f"{sorted(_SPECIAL + NAMED_INITS)} or a callable"
                )
        elif not callable(value):
            raise TypeError(f"scheme[{key!r}] must be an init name or a callable, got {value!r}")


def _match(
    scheme: Mapping[SchemeKey, SchemeValue], name: str, module: nn.Module
) -> tuple[str, SchemeValue] | None:
    for key, value in scheme.items():
        if isinstance(key, type):
            if isinstance(module, key):
                return key.__name__, value
        elif key.startswith("re:"):
            if re.fullmatch(key[3:], name):
                return key, value
        elif fnmatch.fnmatchcase(name, key):
            return key, value
    return None


def _direct_params(module: nn.Module, prefix: str, done: set[int]) -> list[tuple[str, str, Tensor]]:
    found: list[tuple[str, str, Tensor]] = []
    for pname, param in module.named_parameters(recurse=False):
        if id(param) not in done:
            done.add(id(param))
            found.append((pname, prefix + pname, param))
    return found


def _plan(
    model: nn.Module,
    scheme: str | Mapping[SchemeKey, SchemeValue],
    generator: torch.Generator | None,
    distribution: str,
    followers: Followers,
) -> list[Action]:
    done: set[int] = set()
    actions: list[Action] = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        params = _direct_params(module, prefix, done)
        has_stats = hasattr(module, "reset_running_stats")
        if not params and not has_stats:
            continue
        rule: tuple[str, SchemeValue] | None = None
        if not isinstance(scheme, str):
            rule = _match(scheme, name, module)
        act = followers.activation.get(name)
        if rule is None or rule[1] == "auto":
            how = followers.how.get(name, "")
            why = f"matched {rule[0]!r}: " if rule is not None else ""
            actions += _plan_auto(module, name, params, act, how, why, generator, distribution)
        else:
            actions += _plan_rule(module, params, rule, act, generator)
    return actions


def _plan_rule(
    module: nn.Module,
    params: list[tuple[str, str, Tensor]],
    rule: tuple[str, SchemeValue],
    act: Activation | None,
    generator: torch.Generator | None,
) -> list[Action]:
    key, value = rule
    why = f"scheme[{key!r}]"
    if value == "skip":
        return [(InitRecord(f, tuple(p.shape), "untouched", why), noop) for _, f, p in params]
    if value == "reset_parameters":
        reset = getattr(module, "reset_parameters", None)
        if not callable(reset):
            raise ValueError(f"{why} = 'reset_parameters' but {type(module).__name__} has none")
        records = [InitRecord(f, tuple(p.shape), "reset_parameters()", why) for _, f, p in params]
        if not records:
            return []
        return [(r, noop) for r in records[:-1]] + [(records[-1], reset)]
    actions: list[Action] = []
    for pname, full, param in params:
        shape = tuple(param.shape)
        if "bias" in pname:
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
            full, tuple(param.shape), "untouched", f"{why}extra {kind} parameter"
        ), noop
    if callable(reset):
        record = InitRecord(
            full,
            tuple(param.shape),
            "reset_parameters()",
            f"{why}no rule for {kind}; its own reset (global RNG)",
        )
        return record, reset
    return InitRecord(full, tuple(param.shape), "untouched", f"{why}no rule for {kind}"), noop


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
