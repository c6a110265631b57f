"""Forward and backward hooks: activation statistics and the origin of a NaN/Inf.

Both keep their results as small tensors on the model's device; the monitor stacks them with
the gradient norms and moves one tensor to the host per logged step.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

#: Activation modules whose "dead unit" fraction is measured (output <= 0 for a whole batch).
RELU_FAMILY: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU)


#: Leaf modules whose output says nothing new about the activations (skipped by the probe).
PASS_THROUGH: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout, nn.Flatten, nn.Unflatten,
)


def _tensors(obj: Any) -> Iterator[Tensor]:
    """The tensors in a module output: a tensor, or tuples/lists/dicts of them (nested)."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def activation_stats(x: Tensor, dead: bool) -> Tensor:
    r"""Mean, standard deviation and dead-unit fraction of one activation tensor.

    .. math::
        m = \frac{1}{n}\sum_i x_i, \qquad s = \sqrt{\frac{1}{n}\sum_i (x_i - m)^2}, \qquad
        d = \frac{1}{U}\sum_u \mathbb{1}\big[\max_{i \in u} x_i \le 0\big]

    A unit :math:`u` is a channel (dim 1) for 4-D and 5-D tensors and the last dimension
    otherwise; it is dead when it is <= 0 for every example and position of the batch.
    Statistics are computed in float32.

    Args:
        x: the activation.
        dead: whether to compute the dead fraction (ReLU family); nan otherwise.

    Returns:
        A float32 tensor ``[m, s, d]``.

    Example:
        >>> activation_stats(torch.tensor([[1.0, -1.0], [3.0, -2.0]]), dead=True)
        tensor([0.2500, 1.9203, 0.5000])
    """
    v = x.detach().float()
    std, mean = torch.std_mean(v, correction=0)
    if dead and v.dim() >= 1 and v.numel() > 0:
        unit_dim = 1 if v.dim() in (4, 5) else v.dim() - 1
        per_unit = v.movedim(unit_dim, 0).reshape(v.shape[unit_dim], -1).amax(dim=1)
        frac = (per_unit <= 0).float().mean()
    else:
        frac = torch.full((), float("nan"), device=v.device)
    return torch.stack([mean, std, frac])


class ActivationProbe:
    """Forward hooks that collect :func:`activation_stats` only while armed.

    The monitor arms the probe just before a sampled step's forward pass and disarms it at
    that step's ``monitor.step()``, so off-step forwards run with no hook at all. Calls in
    eval mode (``module.training`` False) are ignored; several calls per step (gradient
    accumulation) are averaged.
    """

    def __init__(self, modules: list[tuple[str, nn.Module]]) -> None:
        self.modules = modules
        self._handles: list[RemovableHandle] = []
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}

    @property
    def armed(self) -> bool:
        """Whether the hooks are registered."""
        return bool(self._handles)

    def arm(self) -> None:
        """Register the hooks (no-op when already armed)."""
        if self._handles:
            return
        self._sums.clear()
        self._counts.clear()
        for name, module in self.modules:
            hook = partial(self._hook, name, isinstance(module, RELU_FAMILY))
            self._handles.append(module.register_forward_hook(hook))

    def disarm(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str, dead: bool, module: nn.Module, args: Any, output: Any) -> None:
        if not module.training or not isinstance(output, Tensor):
            return
        if not output.is_floating_point():
            return
        with torch.no_grad():
            stats = activation_stats(output, dead)
        if name in self._sums:
            self._sums[name] = self._sums[name] + stats
            self._counts[name] += 1
        else:
            self._sums[name] = stats
            self._counts[name] = 1

    def collect(self) -> tuple[list[str], Tensor | None]:
        """Disarm; return the module names and their averaged ``(n, 3)`` statistics."""
        self.disarm()
        names = [name for name, _ in self.modules if name in self._sums]
        if not names:
            return [], None
        stacked = torch.stack([self._sums[n] / self._counts[n] for n in names])
        self._sums.clear()
        self._counts.clear()
        return names, stacked


def _probe_sum(t: Tensor) -> Tensor:
    """Float32 sum of ``t`` (no grad): non-finite iff an element is NaN/Inf."""
    with torch.no_grad():
        return t.detach().sum(dtype=torch.float32)


class NonFiniteTracer:
    """Record, per step, which module inputs, outputs and output gradients were non-finite.

    Every module (containers included) gets a forward pre-hook, a forward hook and a tensor
    hook on its outputs. Each records, in call order and without a host sync, the float32 sum
    of the tensor it checks: NaN and Inf propagate through a sum, so the sum is non-finite
    exactly when an element is (barring a float32 overflow of the sum of finite values, which
    needs elements near 1e38 / numel). One fused reduction is several times cheaper than
    ``torch.isfinite(x).all()``, which allocates a mask. The records are:

    - ``("input", name)``: the inputs of ``name`` that no hooked module produced (the data, or
      the result of functional code in the parent's ``forward``);
    - ``("output", name)``: the output of ``name`` (a container's hook runs after its children,
      so a container flagged before any child points at its own code);
    - ``("grad", name)``: the gradient w.r.t. the output of ``name``, in the order backward
      reaches the modules.

    :meth:`origin` reads the flags (one host transfer) and names the first culprit.
    """

    def __init__(self, model: nn.Module) -> None:
        self.kinds: dict[str, str] = {}
        self._handles: list[RemovableHandle] = []
        root_name = type(model).__name__
        for name, module in model.named_modules():
            label = name or f"<model {root_name}>"
            self.kinds[label] = type(module).__name__
            self._handles.append(module.register_forward_pre_hook(partial(self._pre, label)))
            self._handles.append(module.register_forward_hook(partial(self._post, label)))
        self.labels: list[tuple[str, str]] = []
        self.flags: list[Tensor] = []
        self._produced: dict[int, weakref.ref[Tensor]] = {}

    def remove(self) -> None:
        """Remove every hook."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def reset(self) -> None:
        """Forget the flags of the previous step."""
        self.labels = []
        self.flags = []
        self._produced = {}

    def _is_produced(self, t: Tensor) -> bool:
        ref = self._produced.get(id(t))
        return ref is not None and ref() is t

    def _pre(self, label: str, module: nn.Module, args: Any) -> None:
        sums = [
            _probe_sum(t)
            for t in _tensors(args)
            if t.is_floating_point() and not self._is_produced(t)
        ]
        if sums:
            self.labels.append(("input", label))
            self.flags.append(torch.stack(sums).sum() if len(sums) > 1 else sums[0])

    def _post(self, label: str, module: nn.Module, args: Any, output: Any) -> None:
        # A container returning its last child's tensor adds nothing: that one is checked.
        outs = [t for t in _tensors(output) if t.is_floating_point() and not self._is_produced(t)]
        if not outs:
            return
        sums = [_probe_sum(t) for t in outs]
        self.labels.append(("output", label))
        self.flags.append(torch.stack(sums).sum() if len(sums) > 1 else sums[0])
        for t in outs:
            self._produced[id(t)] = weakref.ref(t)
            if t.requires_grad:
                t.register_hook(partial(self._grad, label))

    def _grad(self, label: str, grad: Tensor) -> None:
        self.labels.append(("grad", label))
        self.flags.append(_probe_sum(grad))

    def stacked(self) -> Tensor | None:
        """The probe sums of this step as one tensor (``None`` when nothing was recorded)."""
        if not self.flags:
            return None
        return torch.stack([f.to(self.flags[0].device) for f in self.flags])

    def origin(self, values: list[float]) -> tuple[str, str, str] | None:
        """Name the first culprit from the host copy of :meth:`stacked`.

        Returns:
            ``(phase, module, message)``, or ``None`` when every sum is finite.
        """
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        forward = [i for i in bad if self.labels[i][0] != "grad"]
        if forward:
            kind, name = self.labels[forward[0]]
            mtype = self.kinds.get(name, "?")
            if kind == "input" and name.startswith("<model"):
                return "forward", name, "the model's input (the batch) is non-finite"
            if kind == "input":
                parent = name.rsplit(".", 1)[0] if "." in name else "<model>"
                return (
                    "forward",
                    name,
                    f"the input of module '{name}' ({mtype}) was already non-finite: it comes "
                    f"from functional code in the forward of '{parent}' before '{name}'",
                )
            message = f"module '{name}' ({mtype}) produced the first non-finite output"
            return "forward", name, message
        if bad:
            first = bad[0]
            grads_before = [i for i in range(first) if self.labels[i][0] == "grad"]
            name = self.labels[first][1]
            if grads_before:
                producer = self.labels[grads_before[-1]][1]
                mtype = self.kinds.get(producer, "?")
                return (
                    "backward",
                    producer,
                    f"the backward of module '{producer}' ({mtype}) produced the first "
                    f"non-finite gradient (w.r.t. the output of '{name}')",
                )
            return (
                "backward",
                name,
                f"the gradient w.r.t. the output of '{name}' was non-finite from the start of "
                "backward: the loss or its gradient is non-finite",
            )
        return None
