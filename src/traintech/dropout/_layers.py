"""Which modules count as dropout layers (for schedules and Monte Carlo dropout)."""

from __future__ import annotations

from torch import nn

from traintech._compat import DropoutNd
from traintech.dropout._alpha import AlphaDropout, FeatureAlphaDropout
from traintech.dropout._drop_block import DropBlock2d
from traintech.dropout._drop_connect import DropConnect
from traintech.dropout._drop_path import DropPath
from traintech.dropout._dropout import Dropout
from traintech.dropout._spatial import Dropout1d, Dropout2d, Dropout3d

#: traintech's layers: they take a ``generator`` attribute.
OUR_TYPES: tuple[type[nn.Module], ...] = (
    AlphaDropout,
    DropBlock2d,
    DropConnect,
    DropPath,
    Dropout,
    Dropout1d,
    Dropout2d,
    Dropout3d,
    FeatureAlphaDropout,
)

#: Peer layers recognised by class name (timm, torchvision), all with a float rate ``p``
#: (``drop_prob`` for timm's DropPath/DropBlock2d).
PEER_NAMES = frozenset({"DropPath", "DropBlock2d", "DropBlock3d", "StochasticDepth"})


def is_ours(module: nn.Module) -> bool:
    """Whether ``module`` is one of traintech's dropout layers."""
    return isinstance(module, OUR_TYPES)


def is_dropout_layer(module: nn.Module) -> bool:
    """Whether ``module`` is ours, ``torch.nn``'s (``Dropout*``, ``*AlphaDropout``) or a peer's."""
    return (
        is_ours(module)
        or isinstance(module, DropoutNd)
        or type(module).__name__ in PEER_NAMES
    )


def rate_attribute(module: nn.Module) -> str:
    """The name of the attribute holding the layer's rate (``p`` or timm's ``drop_prob``)."""
    return "p" if hasattr(module, "p") else "drop_prob"


def dropout_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` for every dropout layer of ``model``, in ``named_modules`` order."""
    return [(name, m) for name, m in model.named_modules() if is_dropout_layer(m)]
