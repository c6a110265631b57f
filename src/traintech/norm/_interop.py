"""What torch's utilities need beyond ``isinstance`` to treat our BatchNorm layers as torch's.

``torch.ao.quantization.fuse_modules`` looks fuser methods up by *exact* module types, and its
fused modules (``ConvBn2d``, ``BNReLU2d``, ...) assert exact types too. We register, for every
entry of torch's table that names ``nn.BatchNorm1d/2d/3d``, the same entry with our class, whose
method hands torch's fuser a torch BatchNorm sharing our layer's parameters and buffers.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from traintech._compat import quantization_fusers, register_quantization_fuser
from traintech.norm._batch_norm import BatchNorm1d, BatchNorm2d, BatchNorm3d

_OURS_TO_TORCH: dict[type[nn.Module], type[nn.Module]] = {
    BatchNorm1d: nn.BatchNorm1d,
    BatchNorm2d: nn.BatchNorm2d,
    BatchNorm3d: nn.BatchNorm3d,
}


def as_torch_batchnorm(bn: nn.Module) -> nn.Module:
    """A ``torch.nn.BatchNormNd`` (exact type) sharing ``bn``'s parameters, buffers and mode.

    Returns ``bn`` itself when it is not one of our BatchNorm layers.
    """
    cls = _OURS_TO_TORCH.get(type(bn))
    if cls is None:
        return bn
    new = cls(
        bn.num_features,
        bn.eps,
        bn.momentum,
        bn.affine,
        bn.track_running_stats,
        device="meta",
    )
    for name in ("weight", "bias"):
        new.register_parameter(name, getattr(bn, name))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        new.register_buffer(name, getattr(bn, name))
    new.train(bn.training)
    if hasattr(bn, "qconfig"):
        new.qconfig = bn.qconfig
    return new


def _fuse_with_torch_types(method: Any, is_qat: bool, *modules: nn.Module) -> Any:
    return method(is_qat, *(as_torch_batchnorm(m) for m in modules))


def register_quantization_fusions() -> None:
    """Make ``torch.ao.quantization.fuse_modules`` fuse our BatchNorm layers as torch's."""
    torch_to_ours = {t: o for o, t in _OURS_TO_TORCH.items()}
    for types, method in quantization_fusers().items():
        if not any(t in torch_to_ours for t in types) or not callable(method):
            continue
        ours = tuple(torch_to_ours.get(t, t) for t in types)
        register_quantization_fuser(ours, functools.partial(_fuse_with_torch_types, method))
