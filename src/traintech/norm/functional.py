"""Functional forms of the ``traintech.norm`` layers (the math each module's forward calls).

Signatures follow ``torch.nn.functional`` where torch has the function.
"""

from traintech.norm._batch_norm import batch_norm
from traintech.norm._frozen_batch_norm import frozen_batch_norm
from traintech.norm._fused_add_norm import fused_add_layer_norm, fused_add_rms_norm
from traintech.norm._ghost_batch_norm import ghost_batch_norm
from traintech.norm._group_norm import group_norm
from traintech.norm._instance_norm import instance_norm
from traintech.norm._layer_norm import channel_layer_norm, layer_norm
from traintech.norm._rms_norm import rms_norm
from traintech.norm._sync_batch_norm import sync_batch_norm

__all__ = [
    "batch_norm",
    "channel_layer_norm",
    "frozen_batch_norm",
    "fused_add_layer_norm",
    "fused_add_rms_norm",
    "ghost_batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "rms_norm",
    "sync_batch_norm",
]
