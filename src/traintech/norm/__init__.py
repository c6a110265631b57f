"""Normalization layers, their functional forms, and conversion/inference utilities."""

from traintech.norm._sync_batch_norm import SyncBatchNorm, convert_sync_batchnorm

__all__: list[str] = ["SyncBatchNorm", "convert_sync_batchnorm"]
