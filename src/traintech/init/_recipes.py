r"""The two recipes of :func:`init_model` that span several layers: recurrent and residual.

**Recurrent** (RNN, LSTM, GRU and their cells): orthogonal recurrent weights, Xavier input
weights, forget bias 1.

Recurrent weights are applied at every time step, so their singular values compound over time;
an orthogonal matrix has them all equal to 1 (Saxe et al. 2013, https://arxiv.org/abs/1312.6120 ).
Input weights act once per step, like a Linear layer feeding tanh/sigmoid gates: Xavier. The
LSTM forget gate starts open (bias 1) so that gradients flow through the cell state from the
first step (Jozefowicz et al. 2015, "An Empirical Exploration of Recurrent Network
Architectures"; Gers et al. 2000). Every gate block (torch stacks them along dim 0: LSTM
``i, f, g, o``; GRU ``r, z, n``) is initialised on its own.

**Residual**: the output layer of each residual branch is scaled by :math:`1/\sqrt{N}` after its
init so that a sum of :math:`N` branches keeps unit variance (GPT-2's :math:`1/\sqrt{2L}`).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable
from dataclasses import replace

import torch
from torch import Tensor, nn

from ._followers import Followers, is_weight_layer
from ._orthogonal import orthogonal_
from ._report import Action, InitRecord
from ._xavier_kaiming import xavier_normal_, xavier_std, xavier_uniform_

__all__ = [
    "add_residual_scale",
    "gate_count",
    "is_recurrent",
    "plan_recurrent",
    "resolve_residual",
]


def is_recurrent(module: nn.Module) -> bool:
    """``nn.RNN``/``nn.LSTM``/``nn.GRU`` and their ``*Cell`` variants."""
    return isinstance(module, (nn.RNNBase, nn.RNNCellBase))


def gate_count(module: nn.Module) -> int:
    """Number of gate blocks stacked in each weight: LSTM 4, GRU 3, RNN 1."""
    if isinstance(module, (nn.LSTM, nn.LSTMCell)):
        return 4
    if isinstance(module, (nn.GRU, nn.GRUCell)):
        return 3
    return 1


def plan_recurrent(
    module: nn.Module,
    params: list[tuple[str, str, Tensor]],
    generator: torch.Generator | None,
    distribution: str,
) -> list[Action]:
    """Plan the recipe for ``params`` (``(local name, full name, tensor)``) of one RNN module."""
    gates = gate_count(module)
    is_lstm = isinstance(module, (nn.LSTM, nn.LSTMCell))
    kind = type(module).__name__
    xavier = xavier_uniform_ if distribution == "uniform" else xavier_normal_
    actions: list[Action] = []
    for pname, full, param in params:
        shape = tuple(param.shape)
        if pname.startswith("weight_ih"):
            std = xavier_std(param.chunk(gates, 0)[0])
            record = InitRecord(
                full,
                shape,
                f"xavier_{distribution} per gate ({gates})",
                f"{kind} input weights",
                std,
            )
            actions.append(
                (record, _blocks(param, gates, lambda b: xavier(b, generator=generator)))
            )
        elif pname.startswith(("weight_hh", "weight_hr")):
            n = gates if pname.startswith("weight_hh") else 1
            rows, cols = param.chunk(n, 0)[0].shape
            record = InitRecord(
                full,
                shape,
                f"orthogonal per gate ({n})",
                f"{kind} recurrent weights",
                1.0 / math.sqrt(max(rows, cols)),
            )
            actions.append(
                (record, _blocks(param, n, lambda b: orthogonal_(b, generator=generator)))
            )
        elif pname.startswith("bias"):
            forget = is_lstm and pname.startswith("bias_ih")
            why = f"{kind} bias"
            if is_lstm:
                why += "; forget gate bias_ih + bias_hh = 1"
            label = "zeros, forget block 1" if forget else "zeros"
            record = InitRecord(full, shape, label, why, 0.0)
            actions.append((record, _bias(param, forget)))
        else:
            actions.append(
                (InitRecord(full, shape, "untouched", f"unknown {kind} parameter"), _noop)
            )
    return actions


def _noop() -> None:
    return None


def _blocks(param: Tensor, n: int, fn: Callable[[Tensor], object]) -> Callable[[], None]:
    def run() -> None:
        for block in param.chunk(n, 0):
            fn(block)

    return run


def _bias(bias: Tensor, forget_one: bool) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            bias.zero_()
            if forget_one:
                hidden = bias.size(0) // 4
                bias[hidden : 2 * hidden].fill_(1.0)

    return run


# --- residual branches ---


def resolve_residual(
    model: nn.Module,
    residual: Iterable[str | nn.Module] | None,
    followers: Followers,
) -> list[str]:
    """Qualified names of the branch output layers ``residual`` names (checked, deduplicated)."""
    if residual is None:
        return []
    if isinstance(residual, (str, nn.Module)):
        residual = [residual]
    modules = dict(model.named_modules())
    by_id = {id(m): n for n, m in modules.items()}
    outputs: list[str] = []
    for entry in residual:
        if isinstance(entry, nn.Module):
            if id(entry) not in by_id:
                raise ValueError("residual contains a module that is not part of model")
            matched = [by_id[id(entry)]]
        elif isinstance(entry, str):
            matched = [n for n in modules if n == entry or fnmatch.fnmatchcase(n, entry)]
            matched = [n for n in matched if not any(n.startswith(o + ".") for o in matched)]
        else:
            raise TypeError(f"residual entries must be names or modules, got {entry!r}")
        if not matched:
            raise ValueError(f"residual entry {entry!r} matches no module of model")
        for name in matched:
            out = _branch_output(name, modules, followers)
            if out is None:
                raise ValueError(f"residual entry {entry!r}: module {name!r} has no Linear/Conv")
            if out not in outputs:
                outputs.append(out)
    return outputs


def _branch_output(name: str, modules: dict[str, nn.Module], followers: Followers) -> str | None:
    if is_weight_layer(modules[name]):
        return name
    inside = [n for n in followers.order if n.startswith(name + ".") or not name]
    return inside[-1] if inside else None


def add_residual_scale(
    actions: list[Action], model: nn.Module, outputs: list[str], n: int
) -> list[Action]:
    """``actions`` with each branch output weight's init followed by a ``1/sqrt(n)`` scale."""
    modules = dict(model.named_modules())
    factor = 1.0 / math.sqrt(n)
    weights = {f"{o}.weight": modules[o] for o in outputs}
    scaled: list[Action] = []
    for record, run in actions:
        layer = weights.get(record.name)
        if layer is None:
            scaled.append((record, run))
            continue
        std = None if record.std is None else record.std * factor
        new = replace(
            record,
            init=f"{record.init} x 1/sqrt({n})",
            reason=f"{record.reason}; residual branch output",
            std=std,
        )
        scaled.append((new, _then_scale(run, layer.weight, factor)))
    return scaled


def _then_scale(run: Callable[[], None], weight: Tensor, factor: float) -> Callable[[], None]:
    def both() -> None:
        run()
        with torch.no_grad():
            weight.mul_(factor)

    return both
