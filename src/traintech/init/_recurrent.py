"""The recurrent-layer recipe: orthogonal recurrent weights, Xavier input weights, forget bias 1.

Recurrent weights are applied at every time step, so their singular values compound over time;
an orthogonal matrix has them all equal to 1 (Saxe et al. 2013, https://arxiv.org/abs/1312.6120 ).
Input weights act once per step, like a Linear layer feeding tanh/sigmoid gates: Xavier. The
LSTM forget gate starts open (bias 1) so that gradients flow through the cell state from the
first step (Jozefowicz et al. 2015, "An Empirical Exploration of Recurrent Network
Architectures"; Gers et al. 2000). Every gate block (torch stacks them along dim 0: LSTM
``i, f, g, o``; GRU ``r, z, n``) is initialised on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ._orthogonal import orthogonal_
from ._report import InitRecord
from ._xavier import xavier_normal_, xavier_std, xavier_uniform_

__all__ = ["Action", "gate_count", "is_recurrent", "plan_recurrent"]

#: A planned init: its record and the thunk that performs it.
Action = tuple[InitRecord, Callable[[], None]]


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
