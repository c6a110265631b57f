"""Normalization layers, their functional forms, and conversion/inference utilities.

Layers that are subclasses of their ``torch.nn`` namesakes (``BatchNorm1d/2d/3d``, ``LayerNorm``,
``GroupNorm``, ``InstanceNorm1d/2d/3d``, ``RMSNorm``; same arguments and state_dict keys, plus
clearer errors), ``SyncBatchNorm`` (also on gloo/CPU), ``FrozenBatchNorm2d``, ``GhostBatchNorm``,
``ChannelLayerNorm`` and the fused residual add + norm layers. RMSNorm's own kernel is a fast
path for plain dense CPU tensors; everywhere else torch's op runs. Functional forms live in
:mod:`traintech.norm.functional`.
"""

from traintech.norm import functional
from traintech.norm._batch_norm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from traintech.norm._convert import (
    batchnorm_to_groupnorm,
    batchnorm_to_layernorm,
    choose_num_groups,
    freeze_batchnorm,
    is_batchnorm,
)
from traintech.norm._fold import can_fold, fold_batchnorm, fold_batchnorm_into
from traintech.norm._frozen_batch_norm import FrozenBatchNorm2d
from traintech.norm._fused_add_norm import FusedAddLayerNorm, FusedAddRMSNorm
from traintech.norm._ghost_batch_norm import GhostBatchNorm, chunk_sizes
from traintech.norm._group_norm import GroupNorm
from traintech.norm._instance_norm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from traintech.norm._interop import register_quantization_fusions
from traintech.norm._layer_norm import ChannelLayerNorm, LayerNorm
from traintech.norm._recalibrate import recalibrate_batchnorm
from traintech.norm._rms_norm import RMSNorm
from traintech.norm._sync_batch_norm import SyncBatchNorm, convert_sync_batchnorm

register_quantization_fusions()

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "ChannelLayerNorm",
    "FrozenBatchNorm2d",
    "FusedAddLayerNorm",
    "FusedAddRMSNorm",
    "GhostBatchNorm",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "RMSNorm",
    "SyncBatchNorm",
    "batchnorm_to_groupnorm",
    "batchnorm_to_layernorm",
    "can_fold",
    "choose_num_groups",
    "chunk_sizes",
    "convert_sync_batchnorm",
    "fold_batchnorm",
    "fold_batchnorm_into",
    "freeze_batchnorm",
    "functional",
    "is_batchnorm",
    "recalibrate_batchnorm",
]
