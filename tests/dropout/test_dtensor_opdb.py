"""DTensor inputs (1-rank gloo mesh) and torch's OpInfo samples as an independent reference.

``torch.testing._internal.common_modules.module_db`` has no dropout entries in torch 2.13, so
the OpInfo database (``common_methods_invocations.op_db``: ``nn.functional.dropout``,
``dropout2d``, ``dropout3d``, ``alpha_dropout``, ``feature_alpha_dropout``) gives the sample
inputs; our functional must return torch's exact output for each under the same seed.
"""

from __future__ import annotations

import sys
import types
import unittest
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.distributed as dist
from torch import nn

import traintech.dropout as D
from traintech.dropout import functional as F

P = 0.3
LAYERS: dict[str, Callable[[torch.Generator | None], nn.Module]] = {
    "Dropout": lambda g: D.Dropout(P, generator=g),
    "Dropout-original": lambda g: D.Dropout(P, mode="original", generator=g),
    "Dropout2d": lambda g: D.Dropout2d(P, generator=g),
    "AlphaDropout": lambda g: D.AlphaDropout(P, generator=g),
    "FeatureAlphaDropout": lambda g: D.FeatureAlphaDropout(P, generator=g),
    "DropPath": lambda g: D.DropPath(P, generator=g),
    "DropBlock2d": lambda g: D.DropBlock2d(P, 2, generator=g),
}


@pytest.fixture(scope="module")
def mesh() -> Iterator[object]:
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    from torch.distributed.device_mesh import init_device_mesh

    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,))
    if owns:
        dist.destroy_process_group()


@pytest.mark.parametrize("placement", ["shard0", "shard1", "replicate"])
@pytest.mark.parametrize("with_gen", [False, True], ids=["global", "generator"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_dtensor_input(mesh: object, name: str, with_gen: bool, placement: str) -> None:
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    place = {"shard0": Shard(0), "shard1": Shard(1), "replicate": Replicate()}[placement]
    layer = LAYERS[name](torch.Generator().manual_seed(3) if with_gen else None)
    x = torch.rand(16, 6, 8, 8, dtype=torch.float64).add_(0.5)
    dx = distribute_tensor(x, mesh, [place]).requires_grad_()  # type: ignore[arg-type]
    out = layer(dx)
    assert isinstance(out, DTensor) and out.placements == (place,)
    full = out.full_tensor()
    (grad,) = torch.autograd.grad(out.to_local().sum(), dx)
    gfull = grad.full_tensor() if isinstance(grad, DTensor) else grad
    if name in ("AlphaDropout", "FeatureAlphaDropout"):
        torch.testing.assert_close(layer.eval()(dx).full_tensor(), x)
        return
    keep = (full != 0).double()
    assert 0 < keep.mean() < 1
    if name == "DropBlock2d":
        scale = full.sum() / (x * keep).sum()
        torch.testing.assert_close(full, x * keep * scale)
        torch.testing.assert_close(gfull, keep * scale)
        return
    scale = 1.0 if name == "Dropout-original" else 1 / (1 - P)
    torch.testing.assert_close(full, x * keep * scale, rtol=1e-15, atol=0)
    torch.testing.assert_close(gfull, keep * scale, rtol=1e-15, atol=0)


def test_sequence_parallel_plan(mesh: object) -> None:
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import SequenceParallel, parallelize_module

    model = nn.Sequential(nn.LayerNorm(8), D.Dropout(P), D.DropPath(P))
    parallelize_module(model, mesh, {"0": SequenceParallel(), "1": SequenceParallel()})  # type: ignore[arg-type]
    out = model(torch.randn(2, 5, 8))
    assert isinstance(out, DTensor) or out.shape == (2, 5, 8)


# --- torch's OpInfo samples ------------------------------------------------------------------

OURS = {
    "nn.functional.dropout": F.dropout,
    "nn.functional.dropout2d": F.dropout2d,
    "nn.functional.dropout3d": F.dropout3d,
    "nn.functional.alpha_dropout": F.alpha_dropout,
    "nn.functional.feature_alpha_dropout": F.feature_alpha_dropout,
}


@pytest.fixture(scope="module")
def op_db() -> list[object]:
    # torch's testing package imports expecttest only for its TestCase base class
    try:
        import expecttest  # noqa: F401
    except ImportError:
        sys.modules["expecttest"] = types.SimpleNamespace(TestCase=unittest.TestCase)  # type: ignore[assignment]
    from torch.testing._internal.common_methods_invocations import op_db as db

    return [op for op in db if op.name in OURS]


@pytest.mark.slow
def test_opinfo_samples_same_as_torch(op_db: list[object]) -> None:
    assert {op.name for op in op_db} == set(OURS)  # type: ignore[attr-defined]
    checked = 0
    for op in op_db:
        ours = OURS[op.name]  # type: ignore[attr-defined]
        for dtype in (torch.float32, torch.float64):
            for sample in op.sample_inputs("cpu", dtype, requires_grad=True):  # type: ignore[attr-defined]
                x, args, kwargs = sample.input, sample.args, dict(sample.kwargs)
                p = kwargs.get("p", 0.5)
                if "alpha" in op.name and p == 1.0:  # type: ignore[attr-defined]
                    # ours refuses p=1 for alpha dropout (a = inf); torch returns zeros
                    with pytest.raises(ValueError, match="p=1.0"):
                        ours(x, *args, **kwargs)
                    continue
                if op.name == "nn.functional.dropout2d" and x.dim() == 3:  # type: ignore[attr-defined]
                    with pytest.warns(UserWarning):
                        torch.manual_seed(0)
                        a = ours(x, *args, **kwargs)
                else:
                    torch.manual_seed(0)
                    a = ours(x, *args, **kwargs)
                torch.manual_seed(0)
                # op.op reseeds (wrapper_set_seed): call torch's function directly
                b = getattr(nn.functional, op.name.rsplit(".", 1)[1])(x, *args, **kwargs)  # type: ignore[attr-defined]
                torch.testing.assert_close(a, b, rtol=0, atol=0)
                if b.requires_grad:
                    ga = torch.autograd.grad(a.sum(), x)[0]
                    gb = torch.autograd.grad(b.sum(), x)[0]
                    torch.testing.assert_close(ga, gb, rtol=0, atol=0)
                checked += 1
    assert checked > 50
