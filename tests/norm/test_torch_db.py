"""torch's own module and op databases as an independent reference for our layers/functionals.

``module_db`` (``torch.testing._internal.common_modules``) lists, for each ``nn.BatchNorm*``,
``nn.LayerNorm``, ``nn.GroupNorm``, ``nn.InstanceNorm*``, ``nn.RMSNorm``, the constructor calls
and forward inputs torch tests its modules with; ``op_db`` the sample inputs of
``nn.functional.{rms_norm, layer_norm, group_norm, batch_norm, instance_norm}``. We build OUR
class with the db's constructor inputs, torch's class beside it, and compare outputs, input and
parameter gradients and buffers in float64, in training and in eval. A sample outside the domain
we document (``eps <= 0``, ``momentum`` outside [0, 1], which torch accepts) must raise a
``ValueError`` naming the argument instead.
"""

from __future__ import annotations

import copy
import sys
import types
import unittest
from typing import Any

import pytest
import torch
from torch import nn

import traintech.norm as tn
import traintech.norm.functional as F

try:  # torch.testing._internal imports expecttest (a torch dev dependency) for its TestCase
    import expecttest  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    _stub = types.ModuleType("expecttest")
    _stub.TestCase = unittest.TestCase  # type: ignore[attr-defined]
    sys.modules["expecttest"] = _stub

from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402
from torch.testing._internal.common_modules import module_db  # noqa: E402

TOL = {"rtol": 1e-9, "atol": 1e-9}
MODULES = [
    "nn.BatchNorm1d", "nn.BatchNorm2d", "nn.BatchNorm3d", "nn.GroupNorm", "nn.LayerNorm",
    "nn.InstanceNorm1d", "nn.InstanceNorm2d", "nn.InstanceNorm3d", "nn.RMSNorm",
]  # fmt: skip
MODULE_INFOS = [m for m in module_db if m.name in MODULES]
OPS = {
    "nn.functional.rms_norm": F.rms_norm,
    "nn.functional.layer_norm": F.layer_norm,
    "nn.functional.group_norm": F.group_norm,
    "nn.functional.batch_norm": F.batch_norm,
    "nn.functional.instance_norm": F.instance_norm,
}
OP_INFOS = [o for o in op_db if o.name in OPS]


def test_the_databases_cover_every_norm_layer_and_functional():
    assert sorted(m.name for m in MODULE_INFOS) == sorted(MODULES)
    assert {o.name for o in OP_INFOS} == set(OPS)


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _run(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Output, gradients of the inputs and parameters, and buffers after one forward/backward."""
    args, kwargs = copy.deepcopy((args, kwargs))
    out = module(*args, **kwargs)
    inputs = [t for t in _tensors(args) if t.requires_grad]
    params = list(module.parameters())
    grads: list[torch.Tensor] = []
    if out.requires_grad and out.numel():
        v = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
        grads = list(torch.autograd.grad((out * v).sum(), inputs + params, allow_unused=True,
                                         materialize_grads=True))  # fmt: skip
    return {"out": out, "grads": grads, "buffers": dict(module.named_buffers())}


@pytest.mark.parametrize("info", MODULE_INFOS, ids=lambda m: m.name)
@pytest.mark.parametrize("training", [True, False])
def test_module_db_inputs_give_torchs_values_and_gradients(info, training):
    samples = info.module_inputs_func(
        info, device="cpu", dtype=torch.float64, requires_grad=True, training=training
    )
    assert samples
    ours_cls = getattr(tn, info.name.split(".")[-1])
    for sample in samples:
        ctor, fwd = sample.constructor_input, sample.forward_input
        torch.manual_seed(0)
        theirs = info.module_cls(*ctor.args, **ctor.kwargs).double().train(training)
        ours = ours_cls(*ctor.args, **ctor.kwargs).double().train(training)
        assert isinstance(ours, info.module_cls)
        ours.load_state_dict(theirs.state_dict(), strict=True)
        expected = _run(theirs, fwd.args, fwd.kwargs)
        actual = _run(ours, fwd.args, fwd.kwargs)
        label = sample.desc
        torch.testing.assert_close(actual, expected, **TOL, msg=lambda m, d=label: f"{d}: {m}")


def _out_of_domain(kwargs: dict[str, Any], args: tuple[Any, ...], name: str) -> str | None:
    """The argument our functional refuses in this sample (torch accepts it), or None."""
    eps = kwargs.get("eps")
    if eps is not None and eps <= 0:
        return "eps"
    momentum = kwargs.get("momentum")
    if momentum is not None and not 0 <= momentum <= 1:
        return "momentum"
    return None


@pytest.mark.parametrize("info", OP_INFOS, ids=lambda o: f"{o.name}-{o.variant_test_name}")
def test_op_db_samples_give_torchs_values_and_gradients(info):
    ours = OPS[info.name]
    compared = 0
    for sample in info.sample_inputs("cpu", torch.float64, requires_grad=True):
        refused = _out_of_domain(sample.kwargs, sample.args, info.name)
        if refused is not None:
            with pytest.raises(ValueError, match=refused):
                ours(sample.input, *sample.args, **copy.deepcopy(sample.kwargs))
            continue
        results = []
        for fn in (info.op, ours):
            inp, args, kwargs = copy.deepcopy((sample.input, sample.args, sample.kwargs))
            out = fn(inp, *args, **kwargs)
            leaves = [t for t in _tensors([inp, args, list(kwargs.values())]) if t.requires_grad]
            v = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
            grads = torch.autograd.grad((out * v).sum(), leaves, allow_unused=True,
                                        materialize_grads=True)  # fmt: skip
            buffers = [t for t in _tensors([args, list(kwargs.values())]) if not t.requires_grad]
            results.append((out, grads, buffers))
        torch.testing.assert_close(results[1], results[0], **TOL)
        compared += 1
    assert compared >= 3
