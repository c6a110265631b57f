"""Norm layers on 2 gloo ranks: tensor/sequence parallelism, SyncBatchNorm's double backward.

Our LayerNorm/RMSNorm under ``parallelize_module(..., SequenceParallel())``: DTensor activations
(sharded on the sequence dim) go through torch's op (our CPU kernel only takes plain tensors);
outputs and gradients equal torch's layer under the same plan and torch's layer on the full
batch, in float64. SyncBatchNorm's cross-rank backward refuses ``create_graph=True`` loudly.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.distributed


def test_sequence_parallel_norm_layers_match_torch(run_ranks: Any) -> None:
    results = run_ranks("_norm_tp_workers:sequence_parallel", 2, timeout=120.0)
    for rank_errors in results:
        assert len(rank_errors) == 3 * 2 * 3 - 2 * 1  # the no-affine layer has no dw
        for key, err in rank_errors.items():
            assert err < 1e-10, (key, err)


def test_sync_batchnorm_refuses_double_backward_across_ranks(run_ranks: Any) -> None:
    for result in run_ranks("_norm_tp_workers:sync_bn_double_backward", 2):
        assert result["first_order_finite"]
        assert "does not support double backward" in result["message"]
        assert "create_graph" in result["message"]
