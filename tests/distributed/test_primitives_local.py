"""traintech._distributed in one process: everything is a no-op; nothing gets imported."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from traintech import _distributed as D


def test_plain_tensors_need_no_reduction() -> None:
    t = torch.randn(3, 2)
    assert not D.is_dtensor(t)
    assert D.local_tensor(t) is t
    assert D.local_tensors([t])[0] is t
    assert D.reduce_key(t) == () and D.reduce_key(t, reduced_dims=[1]) == ()
    assert not D.is_distributed()


def test_all_reduce_packed_without_groups_returns_inputs() -> None:
    values = [torch.tensor(1.5), torch.arange(3.0)]
    out = D.all_reduce_packed(values, [(), ()], "sum")
    assert all(a is b for a, b in zip(out, values, strict=True))


@pytest.mark.parametrize("flag", [True, False])
def test_all_ranks_any_single_process(flag: bool) -> None:
    result = D.all_ranks_any(torch.tensor(flag))
    assert result.dtype == torch.bool and result.dim() == 0 and bool(result) is flag


@pytest.mark.parametrize(
    ("op", "keys", "match"),
    [("mean", [()], "op"), ("sum", [(), ()], "keys")],
)
def test_all_reduce_packed_bad_arguments(op: str, keys: list[tuple[()]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        D.all_reduce_packed([torch.tensor(1.0)], keys, op)


def test_import_initializes_nothing() -> None:
    code = (
        "import sys, traintech, traintech.norm, traintech.clip, traintech._distributed\n"
        "import torch.distributed as dist\n"
        "assert 'torch.distributed.tensor' not in sys.modules, 'DTensor imported'\n"
        "assert not dist.is_initialized()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
