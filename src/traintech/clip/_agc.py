"""AGC: unit-wise adaptive gradient clipping relative to the weights' norms."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from traintech._checks import check_nonneg, check_positive
from traintech._compat import foreach_mul_, foreach_norm
from traintech._constants import NORM_EPS
from traintech._distributed import any_dtensor, refuse_fsdp1, refuse_fsdp1_module
from traintech.clip._norm import total_norm
from traintech.clip._protocol import Clipper, ClipResult

NamedParamsLike = nn.Module | Tensor | Iterable[Tensor] | Iterable[tuple[str, Tensor]]


def _unit_norms(x: Tensor, dtype: torch.dtype | None) -> Tensor:
    """2-norm of each slice along dim 0 (kept as ``(d0, 1, ...)``); whole norm for ndim <= 1."""
    if x.dim() <= 1:
        return torch.linalg.vector_norm(x, dtype=dtype)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim())), keepdim=True, dtype=dtype)


def _reduce_dtype(x: Tensor) -> torch.dtype | None:
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else None


def _untouched(coef: Tensor) -> bool:
    """On CPU (where reading a value is free), whether every coefficient is exactly 1.

    Always False under ``torch.compile``: the read would break the graph once per tensor.
    """
    if torch.compiler.is_compiling():
        return False
    return coef.device.type == "cpu" and bool((coef == 1).all())


def adaptive_clip_grad_(
    weights: list[Tensor], grads: list[Tensor], clip_factor: float, eps: float
) -> tuple[Tensor, Tensor]:
    r"""Clip each unit of ``grads`` in place to ``clip_factor * max(||unit of weights||, eps)``.

    Returns the sums of squared unit norms of the gradients before and after clipping
    (0-dim float32 tensors on the first gradient's device, float64 if a gradient is float64).
    Vectorised: 0-/1-D tensors in one ``torch._foreach_norm`` / ``torch._foreach_mul_`` group,
    each higher-dimensional tensor with one norm over dims 1.. per operand; no loop per unit.
    fp16/bf16 norms are accumulated in float32. On CPU a tensor none of whose units is clipped
    is not rewritten. DTensor (FSDP2) gradients use the global unit
    norms of :mod:`traintech.clip._agc_sharded`.
    """
    if any_dtensor(grads):
        from traintech.clip._agc_sharded import adaptive_clip_grad_sharded_

        return adaptive_clip_grad_sharded_(weights, grads, clip_factor, eps)
    device = grads[0].device
    acc = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    norms: list[Tensor] = []  # unit gradient norms, flattened
    coefs: list[Tensor] = []  # the factor each unit was multiplied by
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    others: list[int] = []
    for i, g in enumerate(grads):
        if g.dim() <= 1 and _reduce_dtype(g) is None:
            groups.setdefault((g.device, g.dtype), []).append(i)
        else:
            others.append(i)
    for members in groups.values():
        g_list = [grads[i] for i in members]
        g_norm = torch.stack(foreach_norm(g_list))
        max_norm = torch.stack(foreach_norm([weights[i] for i in members]))
        max_norm = max_norm.clamp_(min=eps).mul_(clip_factor)
        ratio = max_norm / g_norm.clamp(min=NORM_EPS)
        coef = torch.where(g_norm < max_norm, torch.ones_like(ratio), ratio)
        if not _untouched(coef):
            foreach_mul_(g_list, list(coef.unbind()))
        norms.append(g_norm.to(device, acc))
        coefs.append(coef.to(device, acc))
    for i in others:
        g = grads[i]
        dtype = _reduce_dtype(g)
        g_norm = _unit_norms(g, dtype)
        max_norm = _unit_norms(weights[i], dtype).clamp_(min=eps).mul_(clip_factor)
        ratio = max_norm / g_norm.clamp(min=NORM_EPS)
        coef = torch.where(g_norm < max_norm, torch.ones_like(ratio), ratio)
        if not _untouched(coef):
            g.mul_(coef.to(g.dtype) if dtype is not None else coef)
        norms.append(g_norm.reshape(-1).to(device, acc))
        coefs.append(coef.reshape(-1).to(device, acc))
    unit_norm = torch.cat(norms)
    return unit_norm.square().sum(), (unit_norm * torch.cat(coefs)).square().sum()


class AGC(Clipper):
    r"""Unit-wise adaptive gradient clipping (Brock et al., 2021).

    For each output unit :math:`i` of each parameter :math:`W` (row :math:`i` of dim 0; the
    whole tensor when ``W.ndim <= 1``), with :math:`\lambda` = ``clip_factor``:

    .. math::
        G_i \leftarrow \begin{cases}
            G_i & \|G_i\| < \lambda \max(\|W_i\|, \epsilon)\\
            G_i\, \dfrac{\lambda \max(\|W_i\|, \epsilon)}{\max(\|G_i\|, 10^{-6})} & \text{otherwise}
        \end{cases}

    (Frobenius norms over dims 1..). The same result as timm's ``adaptive_clip_grad`` on the
    same tensors (bit for bit for fp32/fp64), computed with one norm per tensor instead of a
    loop of temporaries, in place. fp16/bf16 norms are accumulated in float32.

    Paper: "High-Performance Large-Scale Image Recognition Without Normalization" (NFNets),
    https://arxiv.org/abs/2102.06171. It lets networks without batch normalization train with
    large batches and learning rates; the paper uses :math:`\lambda = 0.01` at batch 4096 (up
    to 0.16 at smaller batches) and does not clip the final classifier: pass ``exclude``.

    The rule needs the weights, so AGC is called on the parameters (``agc(model)``,
    ``agc(model.named_parameters())`` or ``agc(model.parameters())``). Inside a guarded step,
    which calls ``measure``/``decide``/``apply``, bind them at construction:
    ``AGC(0.01, parameters=model)``; :meth:`apply` then clips the bound parameters' units and
    the guarded step never folds AGC into a fused optimizer. AGC is stateless; a non-finite
    gradient stays non-finite (the guarded step skips such a step). The result's ``norm`` is
    the total 2-norm of the gradients before clipping (all of them, excluded ones included),
    ``coef`` is the total norm after divided by the total norm before (1 if nothing clipped),
    ``threshold`` is ``inf`` (there is no global bound) and ``skip`` is False.

    Args:
        clip_factor: :math:`\lambda` > 0, the largest gradient-to-weight norm ratio per unit.
        eps: :math:`\epsilon` >= 0, floor of the weight norm so zero-initialised units can move.
        exclude: names or ``fnmatch`` patterns of parameters left unclipped (e.g. ``"fc.*"``,
            ``"head.weight"``); needs named parameters or a module when not empty.
        parameters: optional module or (named) parameters to bind, for :meth:`decide` and
            :meth:`apply` (the guarded step's protocol).

    Example:
        >>> import torch
        >>> from traintech.clip import AGC
        >>> w = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        >>> w.grad = torch.tensor([[0.3, 0.4], [0.0, 0.001]])
        >>> result = AGC(clip_factor=0.01)([w])
        >>> w.grad
        tensor([[0.0300, 0.0400],
                [0.0000, 0.0010]])
    """

    #: The rule needs the parameters (weights), not only the total norm: ``decide``/``apply``
    #: work only when the parameters were bound at construction (``parameters=``).
    needs_parameters: bool = True

    #: AGC has no statistics: a guarded step may call :meth:`decide` on any norm.
    stateful = False

    def __init__(
        self,
        clip_factor: float = 0.01,
        eps: float = 1e-3,
        *,
        exclude: Iterable[str] = (),
        parameters: NamedParamsLike | None = None,
    ) -> None:
        """Validate the settings; bind ``parameters`` for use inside a guarded step."""
        self.clip_factor = check_positive(clip_factor, "clip_factor")
        self.eps = check_nonneg(eps, "eps", allow_inf=False)
        if isinstance(exclude, str):
            exclude = (exclude,)
        patterns = tuple(exclude)
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise TypeError(f"exclude must hold parameter names (str), got {pattern!r}")
        self.exclude = patterns
        self._bound: list[tuple[Tensor, bool]] | None = None
        if parameters is not None:
            self.bind(parameters)
        #: The summary of the last clipping done by :meth:`apply` (bound mode).
        self.last_result: ClipResult | None = None

    def __repr__(self) -> str:
        """``AGC(clip_factor=..., eps=..., exclude=...)``."""
        return f"AGC(clip_factor={self.clip_factor!r}, eps={self.eps!r}, exclude={self.exclude!r})"

    @property
    def is_bound(self) -> bool:
        """Whether parameters are bound, so :meth:`decide`/:meth:`apply` work (guarded step)."""
        return self._bound is not None

    def bind(self, parameters: NamedParamsLike) -> None:
        """Bind the parameters whose weights the rule reads inside a guarded step.

        :class:`~traintech.clip.GuardedStep` calls this with its optimizer's parameters when
        the AGC it is given has none bound (``exclude`` then needs names: bind the module).
        """
        bound = list(self._items(parameters))
        refuse_fsdp1([p for p, _ in bound])
        self._bound = bound

    def _items(self, parameters: NamedParamsLike) -> Iterator[tuple[Tensor, bool]]:
        """Yield ``(parameter, excluded)`` for each parameter."""
        if isinstance(parameters, nn.Module):
            refuse_fsdp1_module(parameters)
            parameters = parameters.named_parameters()
        elif isinstance(parameters, Tensor):
            parameters = [parameters]
        for index, item in enumerate(parameters):
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                param = item[1]
                excluded = any(fnmatch.fnmatchcase(item[0], p) for p in self.exclude)
            else:
                param, excluded = item, False
                if self.exclude:
                    raise ValueError(
                        f"exclude={self.exclude!r} needs parameter names: pass the module or "
                        "model.named_parameters(), not model.parameters()"
                    )
            if not isinstance(param, Tensor):
                raise TypeError(
                    f"parameters[{index}] is a {type(param).__name__}; expected a tensor or a "
                    "(name, tensor) pair"
                )
            yield param, excluded

    @torch.no_grad()
    def __call__(self, parameters: NamedParamsLike) -> ClipResult:
        """Clip each unit's gradient in place; return the total norms' summary.

        Raises:
            ValueError: if no parameter has a gradient (as every clipper), or ``exclude`` is
                set and the parameters carry no names.
            TypeError: if an element of ``parameters`` is not a tensor or (name, tensor) pair.
        """
        items = [(p, excluded) for p, excluded in self._items(parameters) if p.grad is not None]
        refuse_fsdp1([p for p, _ in items])
        if not items:
            raise ValueError(
                "parameters has no gradients: AGC needs at least one tensor with a .grad (call "
                "it after loss.backward(), with the model or model.named_parameters())"
            )
        return self._clip(items)

    def _clip(self, items: list[tuple[Tensor, bool]]) -> ClipResult:
        kept = [p for p, excluded in items if not excluded]
        rest = [p.grad for p, excluded in items if excluded and p.grad is not None]
        grads = [p.grad for p in kept if p.grad is not None]
        if not grads and not rest:
            zero = torch.zeros(())
            return ClipResult(zero, torch.ones(()), torch.tensor(math.inf), torch.tensor(False))
        device = (grads or rest)[0].device
        pre = post = torch.zeros((), device=device)
        if grads:
            pre, post = adaptive_clip_grad_(
                [p.detach() for p in kept], grads, self.clip_factor, self.eps
            )
        if rest:
            acc = torch.float64 if any(g.dtype == torch.float64 for g in rest) else torch.float32
            if any_dtensor(rest):  # the global norm of the excluded shards
                rest_sq = total_norm(rest, 2.0).to(device, acc).square()
            else:
                norms = [torch.linalg.vector_norm(g, dtype=acc).to(device) for g in rest]
                rest_sq = torch.stack(norms).square().sum()
            pre, post = pre + rest_sq, post + rest_sq
        norm = pre.sqrt()
        coef = torch.where(pre > 0, post.sqrt() / norm, torch.ones_like(norm))
        return ClipResult(
            norm=norm,
            coef=coef,
            threshold=torch.full((), math.inf, device=device),
            skip=torch.zeros((), dtype=torch.bool, device=device),
        )

    def decide(self, norm: Tensor) -> ClipResult:
        """With bound parameters: the identity result (the per-unit clipping is in :meth:`apply`).

        Lets a guarded step run measure, decide, apply: ``coef`` is 1 and ``threshold`` inf
        here; :attr:`last_result` holds the real summary once :meth:`apply` has run.

        Raises:
            TypeError: without bound parameters (a total norm cannot express the rule).
        """
        self._require_bound("decide")
        one = torch.ones((), dtype=norm.dtype, device=norm.device)
        inf = torch.full((), math.inf, dtype=norm.dtype, device=norm.device)
        return ClipResult(norm, one, inf, torch.zeros((), dtype=torch.bool, device=norm.device))

    @torch.no_grad()
    def apply(self, grads: list[Tensor], result: ClipResult) -> None:
        """With bound parameters: clip the units of the bound parameters whose grad is in ``grads``.

        Raises:
            TypeError: without bound parameters.
        """
        bound = self._require_bound("apply")
        items = [(p, ex) for p, ex in bound if p.grad is not None]
        if len(items) != len(grads):  # a subset: match by identity (ids are not traced)
            wanted = {id(g) for g in grads}
            items = [(p, ex) for p, ex in items if id(p.grad) in wanted]
        self.last_result = self._clip(items)

    def _require_bound(self, method: str) -> list[tuple[Tensor, bool]]:
        if self._bound is None:
            raise TypeError(
                f"AGC.{method}() needs the weights: construct AGC(..., parameters=model) to use it "
                "inside a guarded step, or call agc(model) / agc(model.named_parameters())"
            )
        return self._bound

    def state_dict(self) -> dict[str, Any]:
        """Return the settings (AGC has no statistics), with ``_version``."""
        state = super().state_dict()
        state["settings"] = {
            "clip_factor": self.clip_factor,
            "eps": self.eps,
            "exclude": list(self.exclude),
        }
        return state
