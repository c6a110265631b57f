"""``DropConnect``: drop the weights of a wrapped Linear/Conv layer during training."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from traintech._checks import check_generator
from traintech.dropout import functional as F
from traintech.dropout._checks import check_mode, check_p

_INNER = "module."


def _strip_prefix(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    # state_dict post-hook: "<prefix>module.weight" -> "<prefix>weight" (keys of the wrapped
    # layer unchanged). This module's keys are the last ones added, so the order is kept.
    inner = prefix + _INNER
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)


def _add_prefix(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    # load pre-hook: accept the wrapped layer's own keys (and old "module."-prefixed ones).
    inner = prefix + _INNER
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix) :]] = state_dict.pop(key)


class DropConnect(nn.Module):
    r"""DropConnect (Wan et al. 2013): each weight of the wrapped layer dropped with prob ``p``.

    .. math::
        y = f\big(x;\ W \odot M / (1-p),\ b\big), \qquad M_{ij} \sim \mathrm{Bernoulli}(1-p)

    in training (one mask per forward call, shared by the batch); ``f(x; W, b)`` in eval.
    ``mode="original"`` uses :math:`W \odot M` in training and :math:`(1-p)W` in eval (the
    paper's mean-field inference). The wrapped layer runs with the masked weight through
    ``torch.func.functional_call``, so any module with a ``weight`` Parameter works
    (``Linear``, ``Conv*d``, ``Embedding``, ...), or another parameter via ``weight_name``.
    The state_dict keys are the wrapped layer's (no ``module.`` prefix): a plain
    ``nn.Linear`` checkpoint loads into
    ``DropConnect(nn.Linear(...))`` and back. Not to be confused with timm's old
    "drop connect", which is stochastic depth (:class:`DropPath`). ``torch.fx.symbolic_trace``
    must treat it as a leaf module (a ``Tracer`` whose ``is_leaf_module`` says so); tracing
    through it raises ``TypeError``. ``torch.export`` and ``torch.compile`` trace it.
    Paper: https://proceedings.mlr.press/v28/wan13.html.

    Args:
        module: the layer to wrap; must have a ``weight_name`` ``nn.Parameter``.
        p: probability of a weight to be dropped, in ``[0, 1]``. Default: 0.5.
        mode: ``"inverted"`` (default) or ``"original"``.
        generator: source of randomness (default: torch's global generator).
        weight_name: the parameter to drop. Default: ``"weight"``; e.g. ``"weight_hh_l0"``
            for the recurrent weights of an ``nn.LSTM`` (the weight-dropped LSTM of
            AWD-LSTM, Merity et al. 2017, https://arxiv.org/abs/1708.02182).

    Example:
        >>> layer = nn.Linear(3, 1, bias=False)
        >>> _ = nn.init.ones_(layer.weight)
        >>> m = DropConnect(layer, 0.5, generator=torch.Generator().manual_seed(0))
        >>> m(torch.ones(1, 3))
        tensor([[2.]], grad_fn=<MmBackward0>)
        >>> list(m.state_dict())
        ['weight']
    """

    def __init__(
        self,
        module: nn.Module,
        p: float = 0.5,
        *,
        mode: str = "inverted",
        generator: torch.Generator | None = None,
        weight_name: str = "weight",
    ) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        if not isinstance(weight_name, str):
            raise TypeError(f"weight_name must be a str, got {type(weight_name).__name__}")
        if not isinstance(getattr(module, weight_name, None), nn.Parameter):
            raise TypeError(
                f"module must have a `{weight_name}` nn.Parameter to drop (e.g. nn.Linear, "
                f"nn.Conv2d; weight_name='weight_hh_l0' for nn.LSTM); "
                f"{type(module).__name__} has none"
            )
        p = check_p(p)
        mode = check_mode(mode)
        check_generator(generator)
        super().__init__()
        self.module = module
        self.p = p
        self.mode = mode
        self.generator = generator
        self.weight_name = weight_name
        save_hook = getattr(self, "register_state_dict_post_hook", None)
        if save_hook is None:  # older torch: the same hook through the private name
            save_hook = self._register_state_dict_hook
        save_hook(_strip_prefix)
        if hasattr(self, "register_load_state_dict_pre_hook"):
            self.register_load_state_dict_pre_hook(_add_prefix)
        else:  # older torch
            self._register_load_state_dict_pre_hook(_add_prefix, with_module=True)

    def extra_repr(self) -> str:
        """``p`` and the non-default ``mode`` / ``weight_name``."""
        text = f"p={self.p}" + (f", mode={self.mode!r}" if self.mode != "inverted" else "")
        return text + (
            f", weight_name={self.weight_name!r}" if self.weight_name != "weight" else ""
        )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped layer with its weight masked (training) or unchanged (eval)."""
        weight: Tensor = getattr(self.module, self.weight_name)
        masked = F.drop_connect(
            weight, self.p, self.training, mode=self.mode, generator=self.generator
        )
        if masked is weight:
            return self.module(*args, **kwargs)
        if isinstance(masked, torch.fx.Proxy):
            raise TypeError(
                "DropConnect cannot be traced through by torch.fx.symbolic_trace (the wrapped "
                "layer must run with a masked weight, which FX cannot express); trace it as a "
                "leaf: a torch.fx.Tracer whose is_leaf_module returns True for DropConnect"
            )
        return torch.func.functional_call(self.module, {self.weight_name: masked}, args, kwargs)
