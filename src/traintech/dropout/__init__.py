"""The dropout family and Monte Carlo dropout.

Layers (identity in eval mode, ``generator=`` for their randomness, ``p`` checked at
construction): :class:`Dropout` (inverted or original), :class:`Dropout1d`,
:class:`Dropout2d`, :class:`Dropout3d`, :class:`AlphaDropout`, :class:`FeatureAlphaDropout`,
:class:`DropConnect`, :class:`DropPath` (with :func:`drop_path_rates`), :class:`DropBlock2d`.
Training-time schedule: :class:`DropoutScheduler`. Uncertainty: :func:`mc_predict` ->
:class:`MCResult`. Functional forms: :mod:`traintech.dropout.functional`.
"""

from traintech.dropout import functional
from traintech.dropout._alpha import AlphaDropout, FeatureAlphaDropout
from traintech.dropout._drop_block import DropBlock2d
from traintech.dropout._drop_connect import DropConnect
from traintech.dropout._drop_path import DropPath, drop_path_rates
from traintech.dropout._dropout import Dropout
from traintech.dropout._mc import MCResult, mc_predict
from traintech.dropout._schedule import DropoutScheduler
from traintech.dropout._spatial import Dropout1d, Dropout2d, Dropout3d

__all__ = [
    "AlphaDropout",
    "DropBlock2d",
    "DropConnect",
    "DropPath",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "DropoutScheduler",
    "FeatureAlphaDropout",
    "MCResult",
    "drop_path_rates",
    "functional",
    "mc_predict",
]
