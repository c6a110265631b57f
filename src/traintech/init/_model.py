"""``init_model``: initialise a whole model, each parameter by the rule that covers it.

The entry point checks every argument before anything is written, plans (:mod:`._plan`),
applies the plan, and says loudly what it could not do: a ``scheme`` key that matches nothing
is an error, parameters that no rule covers and repeated calls are warned about.
"""

from __future__ import annotations

import difflib
import re
import warnings
import weakref
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .._checks import check_bool, check_choice, check_generator_device, check_positive_int
from ._followers import find_followers, is_weight_layer
from ._plan import UNCOVERED, SchemeKey, SchemeValue, key_matches, plan
from ._recipes import add_residual_scale, resolve_residual
from ._report import InitReport
from ._rules import NAMED_INITS

__all__ = ["init_model"]

_SPECIAL = ("auto", "skip", "reset_parameters")
_DISTRIBUTIONS = ("uniform", "normal")

#: Models this process initialised (weakly held, so models are not kept alive).
_INITIALISED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def init_model(
    model: nn.Module,
    scheme: str | Mapping[SchemeKey, SchemeValue] = "auto",
    generator: torch.Generator | None = None,
    *,
    residual: Iterable[str | nn.Module] | None = None,
    num_residual: int | None = None,
    distribution: str = "uniform",
    use_fx: bool = True,
    warn_repeat: bool = True,
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
    A name pattern that matches a parameter's qualified name (``"head.weight"``) covers that
    parameter alone and takes precedence over its module's key. A key that matches no module
    and no parameter is an error (with the closest names), never silently ignored.
    Values are ``"auto"``, ``"skip"``, ``"reset_parameters"``, a name from
    ``kaiming_uniform, kaiming_normal, xavier_uniform, xavier_normal, lecun_uniform,
    lecun_normal, orthogonal, normal, trunc_normal, zeros, ones`` or a callable
    ``fn(tensor[, generator=])``; a name or callable fills every non-bias parameter of the
    module and zeroes its biases.

    Tied parameters (one tensor under several names, e.g. ``lm_head.weight = wte.weight``) are
    initialised once, by the owner that is not an embedding: the output layer's init, never
    :math:`\mathcal{N}(0, 1)` (a ``scheme`` key naming either side wins).
    ``transformers``' ``Conv1D`` (weight ``(in, out)``) is a weight layer with its fans read
    from the right axes (duck-typed: class name ``Conv1D``, ``nf``, ``nx``).

    Warnings (``UserWarning``): parameters that no rule covers (left untouched, or reset by
    their module's own ``reset_parameters()`` with the global RNG) are named, with the
    ``scheme`` entry that would cover them, and marked in the report (``report.uncovered``);
    a second call on a model this function already initialised warns (frameworks call setup
    hooks repeatedly, re-drawing every weight) unless ``warn_repeat=False``.

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
        warn_repeat: warn when ``model`` was already initialised by ``init_model`` (default);
            False when re-initialising on purpose.

    Returns:
        An :class:`InitReport`: per parameter, the init applied, the target std and the reason.

    Raises:
        TypeError: for a non-module ``model``, a bad ``generator``, or a bad ``scheme`` key/value.
        ValueError: for an unknown ``scheme``/``distribution`` name, a ``scheme`` key or
            ``residual`` entry that matches nothing, ``num_residual < 1``, or a fan-based init
            on a 1-d parameter.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> report = init_model(net, generator=torch.Generator().manual_seed(0))
        >>> [r.init for r in report]
        ['kaiming_uniform(a=0, fan_in, relu)', 'zeros', 'xavier_uniform', 'zeros']
        >>> init_model(net, {"2.weight": "zeros"}, warn_repeat=False)["2.weight"].init
        'zeros'
        >>> init_model(net, {"2.wieght": "zeros"})
        Traceback (most recent call last):
        ...
        ValueError: scheme key '2.wieght' matches no module or parameter of Sequential; ...
    """
    _validate(model, scheme, generator, distribution, num_residual)
    check_bool(use_fx, "use_fx")
    check_bool(warn_repeat, "warn_repeat")
    if isinstance(scheme, str) and scheme != "auto":
        layers = {type(m) for m in model.modules() if is_weight_layer(m)}
        if not layers:
            raise ValueError(
                f"scheme={scheme!r} applies to Linear/Conv/Bilinear/Conv1D weights, but "
                f"{type(model).__name__} has none; use a mapping such as "
                f"{{nn.Embedding: {scheme!r}}} to name the modules it should cover"
            )
        scheme = {layer: scheme for layer in sorted(layers, key=lambda t: t.__name__)}
    elif isinstance(scheme, Mapping):
        _check_keys_match(model, scheme)
    followers = find_followers(model, use_fx=use_fx)
    outputs = resolve_residual(model, residual, followers)
    if num_residual is None:
        num_residual = len(outputs)
    actions = plan(model, scheme, generator, distribution, followers)
    if outputs:
        actions = add_residual_scale(actions, model, outputs, num_residual)
    if warn_repeat and model in _INITIALISED:
        warnings.warn(
            f"init_model was already called on this {type(model).__name__} (id {id(model):#x}); "
            f"calling it again re-draws every weight, discarding the first init and anything "
            f"trained or loaded since (frameworks call setup hooks more than once). Call it "
            f"once, e.g. guarded by a flag, or pass warn_repeat=False to re-initialise on purpose",
            UserWarning,
            stacklevel=2,
        )
    for _, run in actions:
        run()
    materialized = not any(t.is_meta for t in model.parameters())
    if materialized:
        _INITIALISED.add(model)
    records = [r for r, _ in actions]
    buffers = [r for r in records if r.name.endswith("running_*")]
    position = {n: i for i, (n, _) in enumerate(model.named_parameters(remove_duplicate=False))}
    params = sorted(
        (r for r in records if not r.name.endswith("running_*")),
        key=lambda r: position.get(r.name, len(position)),
    )
    uncovered = [r.name for r in params if UNCOVERED in r.reason]
    if uncovered:
        _warn_uncovered(model, params, uncovered)
    return InitReport(params, followers.method, materialized, buffers, uncovered)


def _warn_uncovered(model: nn.Module, params: list, uncovered: list[str]) -> None:
    by_name = {r.name: r for r in params}
    listed = "; ".join(f"{n} ({by_name[n].init}: {by_name[n].reason})" for n in uncovered[:8])
    more = f" and {len(uncovered) - 8} more" if len(uncovered) > 8 else ""
    first = uncovered[0]
    warnings.warn(
        f"init_model: no rule covers {len(uncovered)} parameter(s) of "
        f"{type(model).__name__}: {listed}{more}. Give each a rule in the scheme mapping, "
        f"e.g. init_model(model, {{{first!r}: 'normal'}}) for one parameter, a module type or "
        f"name pattern as key for a whole module ('skip' to keep it as it is, "
        f"'reset_parameters' to use its own reset); see report.uncovered",
        UserWarning,
        stacklevel=3,
    )


def _check_keys_match(model: nn.Module, scheme: Mapping[SchemeKey, SchemeValue]) -> None:
    modules = dict(model.named_modules())
    names = [n for n in modules if n] + [
        n for n, _ in model.named_parameters(remove_duplicate=False)
    ]
    for key in scheme:
        if isinstance(key, type):
            if any(isinstance(m, key) for m in modules.values()):
                continue
            kinds = sorted({type(m).__name__ for m in modules.values()})
            close = difflib.get_close_matches(key.__name__, kinds, n=3, cutoff=0.5)
            raise ValueError(
                f"scheme key {key.__name__} matches no module of {type(model).__name__}; "
                f"close matches: {close}; module types present: {kinds[:12]}"
            )
        if any(key_matches(key, n) for n in names):
            continue
        pattern = key[3:] if key.startswith("re:") else key
        close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.5)
        raise ValueError(
            f"scheme key {key!r} matches no module or parameter of {type(model).__name__}; "
            f"close matches: {close}"
        )


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
    check_choice(distribution, "distribution", _DISTRIBUTIONS)
    if num_residual is not None:
        check_positive_int(num_residual, "num_residual")
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
