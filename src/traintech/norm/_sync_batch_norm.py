"""SyncBatchNorm: batch statistics reduced across processes, on every backend (gloo on CPU too)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from traintech.norm._batch_norm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm
from traintech.norm._stats import is_symbolic

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm", "sync_batch_norm"]


def _stat_dtype(x: Tensor) -> torch.dtype:
    """Dtype of the exchanged statistics: float64 where the device has it, else float32."""
    return torch.float32 if x.device.type == "mps" else torch.float64


def _compute_dtype(x: Tensor) -> torch.dtype:
    """Dtype the normalization is computed in: float32 for fp16/bf16 inputs, else the input's."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _local_stats(x: Tensor) -> tuple[int, Tensor, Tensor]:
    """This rank's ``(count, mean, xc)`` per channel, ``xc = x - mean`` in the compute dtype.

    Two passes (a sum, then the centered values), which is accurate where ``E[x^2] - E[x]^2``
    cancels and several times faster on CPU than ``torch.var_mean`` over dims ``(0, 2, ...)``.
    """
    channels = x.shape[1]
    count = x.numel() // channels
    xa = x.to(_compute_dtype(x))
    shape = [1, channels] + [1] * (x.dim() - 2)
    if count == 0:
        return 0, xa.new_zeros(channels), xa
    mean = xa.sum(_reduce_dims(x)) / count
    return count, mean, xa - mean.view(shape)


def _reduce_dims(x: Tensor) -> list[int]:
    return [d for d in range(x.dim()) if d != 1]


def _gather_stats(
    x: Tensor, local_count: int, local_mean: Tensor, xc: Tensor, group: Any
) -> tuple[Tensor, Tensor, Tensor]:
    """Global ``(count, mean, M2)`` per channel, combined from every rank's local statistics.

    Each rank sends ``[n_r, mean_r, M2_r]`` (one packed tensor, one ``all_gather``); the ranks are
    combined with Chan et al.'s parallel formula, which is exact for any split of the batch
    (including ranks with no samples) and avoids the cancellation of ``E[x^2] - E[x]^2``.
    """
    import torch.distributed as dist

    channels = x.shape[1]
    sdt = _stat_dtype(x)
    packed = torch.zeros(2 * channels + 1, dtype=sdt, device=x.device)
    if local_count > 0:
        packed[0] = local_count
        packed[1 : channels + 1] = local_mean.to(sdt)
        packed[channels + 1 :] = (xc * xc).sum(_reduce_dims(x)).to(sdt)
    world = dist.get_world_size(group)
    gathered = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(gathered, packed, group=group)
    table = torch.stack(gathered)  # (world, 2C+1)
    counts = table[:, :1]
    means = table[:, 1 : channels + 1]
    m2s = table[:, channels + 1 :]
    count = counts.sum()
    mean = (counts * means).sum(0) / count
    m2 = (m2s + counts * (means - mean) ** 2).sum(0)
    if local_count <= 1 and int(count.item()) <= 1:
        # Every rank reaches this branch when the global count is <= 1, so all raise together.
        raise ValueError(
            "Expected more than 1 value per channel when training, got input size "
            f"{list(x.shape)} on this rank and {int(count.item())} value(s) per channel in total"
        )
    return count, mean, m2


class _SyncBatchNormFunction(torch.autograd.Function):
    """Normalize with global statistics; the backward all-reduces the two per-channel sums.

    Works on ``xc = x - mean_local`` (kept for the backward instead of ``x``): with
    ``delta = mean - mean_local``, ``x_hat = (xc - delta) * invstd``, so the output is one
    ``addcmul`` and the input gradient two.
    """

    @staticmethod
    def forward(
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        group: Any,
    ) -> tuple[Tensor, ...]:
        """``(y, mean, unbiased_var)`` then the intermediates the backward needs."""
        local_count, local_mean, xc = _local_stats(x)
        count, mean, m2 = _gather_stats(x, local_count, local_mean, xc, group)
        cdt = xc.dtype
        invstd = torch.rsqrt(m2 / count + eps)
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        delta = (mean - local_mean.to(mean.dtype)).to(cdt)
        scale = invstd.to(cdt) if weight is None else invstd.to(cdt) * weight.to(cdt)
        shift = -delta * scale if bias is None else bias.to(cdt) - delta * scale
        y = torch.addcmul(shift.view(shape), xc, scale.view(shape))
        unbiased = m2 / (count - 1).clamp_min(1)
        return y.to(x.dtype), mean, unbiased, xc, delta, invstd.to(cdt), count

    @staticmethod
    def setup_context(
        ctx: FunctionCtx, inputs: tuple[Any, ...], output: tuple[Tensor, ...]
    ) -> None:
        """Save the centered input and the statistics (outputs 3-6) and the weight."""
        weight, group = inputs[1], inputs[4]
        _, mean, unbiased, xc, delta, invstd, count = output
        extra = [] if weight is None else [weight]
        ctx.save_for_backward(xc, delta, invstd, count, *extra)
        ctx.group = group  # type: ignore[attr-defined]
        ctx.mark_non_differentiable(mean, unbiased, xc, delta, invstd, count)

    @staticmethod
    def backward(
        ctx: FunctionCtx, grad_y: Tensor, *_grad_stats: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        """Input, weight and bias gradients; refuses ``create_graph=True`` (see below)."""
        if torch.is_grad_enabled():
            # The backward all-reduces with torch.distributed, which autograd does not
            # differentiate: a second derivative would miss the other ranks' terms.
            raise RuntimeError(
                "SyncBatchNorm across processes does not support double backward "
                "(create_graph=True / gradient penalties): its backward all-reduces per-channel "
                "sums, which autograd cannot differentiate. Compute the penalty without "
                "create_graph, or use BatchNorm (one process, or per-rank statistics)."
            )
        import torch.distributed as dist

        xc, delta, invstd, count, *extra = ctx.saved_tensors  # type: ignore[attr-defined]
        weight = extra[0] if extra else None
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        cdt = xc.dtype
        dims = _reduce_dims(xc)
        channels = xc.shape[1]
        shape = [1, channels] + [1] * (xc.dim() - 2)
        dy = grad_y.to(cdt)
        sum_dy = dy.sum(dims)
        sum_dy_xhat = ((dy * xc).sum(dims) - delta * sum_dy) * invstd
        grad_x = grad_w = grad_b = None
        if needs[0]:
            packed = torch.cat([sum_dy, sum_dy_xhat]).to(count.dtype)
            dist.all_reduce(packed, group=ctx.group)  # type: ignore[attr-defined]
            mean_dy = packed[:channels].div(count).to(cdt)
            mean_dy_xhat = packed[channels:].div(count).to(cdt)
            # dx = s * (dy - mean_dy - x_hat * mean_dy_xhat), x_hat = (xc - delta) * invstd
            s = invstd if weight is None else invstd * weight.to(cdt)
            k_xc = -s * invstd * mean_dy_xhat
            k_0 = -s * (mean_dy - delta * invstd * mean_dy_xhat)
            grad_x = torch.addcmul(k_0.view(shape), dy, s.view(shape))
            grad_x = grad_x.addcmul_(xc, k_xc.view(shape)).to(grad_y.dtype)
        if weight is not None and needs[1]:
            grad_w = sum_dy_xhat.to(weight.dtype)
        if needs[2]:
            grad_b = sum_dy.to(grad_y.dtype)
        return grad_x, grad_w, grad_b, None, None


def _world_size(process_group: Any) -> int:
    """World size of ``process_group`` (the default group when None); 1 without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(process_group)


def sync_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    process_group: Any = None,
) -> Tensor:
    r"""Batch normalization whose training statistics cover the whole distributed batch.

    .. math::
        \mu_c = \frac{1}{N}\sum_{r}\sum_{i \in B_r} x_{ic}, \qquad
        \sigma^2_c = \frac{1}{N}\sum_{r}\sum_{i \in B_r} (x_{ic} - \mu_c)^2, \qquad
        y_{ic} = \frac{x_{ic} - \mu_c}{\sqrt{\sigma^2_c + \epsilon}}\,\gamma_c + \beta_c

    where :math:`B_r` is rank :math:`r`'s part of the batch and :math:`N = \sum_r |B_r|` (ranks
    may hold different numbers of samples, even none). Each rank's count, mean and sum of squared
    deviations are combined with the parallel formula of Chan et al. (1979); the running
    statistics take :math:`\sigma^2_c N / (N - 1)`. Same arguments as
    :func:`torch.nn.functional.batch_norm` plus ``process_group``; the running statistics are
    updated in place. Without an initialized process group, with a group of one process, or
    when ``training`` is False, this is :func:`torch.nn.functional.batch_norm` (torch's native
    kernel, the fastest path for that identical computation).

    Paper: Ioffe & Szegedy, "Batch Normalization", https://arxiv.org/abs/1502.03167.

    Args:
        input: ``(N, C, *)`` tensor.
        running_mean: ``(C,)`` running mean, updated in training mode (or None).
        running_var: ``(C,)`` running variance, updated in training mode (or None).
        weight: ``(C,)`` scale :math:`\gamma` (or None).
        bias: ``(C,)`` shift :math:`\beta` (or None).
        training: use (and reduce) the batch statistics; otherwise the running ones.
        momentum: factor of the running-statistics update.
        eps: added to the variance.
        process_group: group to reduce over; the default group when None.

    Returns:
        The normalized tensor, of ``input``'s shape and dtype.

    Example:
        >>> x = torch.tensor([[1.0], [3.0]])
        >>> sync_batch_norm(x, None, None, training=True)  # no process group: plain BatchNorm
        tensor([[-1.0000],
                [ 1.0000]])
    """
    if not training or _world_size(process_group) == 1:
        return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    y, mean, unbiased, *_ = _SyncBatchNormFunction.apply(input, weight, bias, eps, process_group)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.dtype) * momentum)
            running_var.mul_(1.0 - momentum).add_(unbiased.to(running_var.dtype) * momentum)
    return y


class SyncBatchNorm(_BatchNorm):
    r"""BatchNorm whose batch statistics are reduced across the processes of a group.

    A drop-in for :class:`torch.nn.SyncBatchNorm` (same constructor arguments, ``state_dict`` keys
    and ``extra_repr``) that also runs on CPU tensors with the gloo backend, where torch's
    raises "SyncBatchNorm expected input tensor to be on GPU". It derives from torch's BatchNorm
    base class (``isinstance(m, torch.nn.modules.batchnorm._BatchNorm)`` holds), deliberately not
    from ``torch.nn.SyncBatchNorm``: ``DistributedDataParallel`` refuses every
    ``nn.SyncBatchNorm`` instance in a CPU model, which would rule out gloo/CPU training with it.
    In training mode every rank
    normalizes with the statistics of the concatenated batch of all ranks of ``process_group``,
    computed as in :func:`sync_batch_norm`:

    .. math::
        y = \frac{x - \mu_{\text{global}}}{\sqrt{\sigma^2_{\text{global}} + \epsilon}}
            \,\gamma + \beta

    Gradients flow through the global statistics: the backward all-reduces
    :math:`\sum \partial y` and :math:`\sum \partial y \cdot \hat x` per channel, so input
    gradients equal those of one BatchNorm over the whole batch; weight and bias gradients are
    each rank's share (DDP sums or averages them as for any parameter). Uneven per-rank batch
    sizes, including an empty one, are exact. In eval mode, without an initialized process group
    or with a group of one process, it is exactly :class:`torch.nn.BatchNorm2d` (any rank >= 2).

    Paper: Ioffe & Szegedy, "Batch Normalization", https://arxiv.org/abs/1502.03167.

    Args:
        num_features: number of channels ``C`` of an ``(N, C, *)`` input.
        eps: added to the variance for numerical stability.
        momentum: factor of the running-statistics update; None for a cumulative average.
        affine: learn a per-channel scale (and shift).
        track_running_stats: keep running mean/variance for eval mode.
        process_group: group to reduce over; the default (world) group when None.
        device: device of the parameters and buffers.
        dtype: dtype of the parameters and buffers.
        bias: learn the shift :math:`\beta` (with ``affine``).

    Example:
        >>> bn = SyncBatchNorm(1)
        >>> bn(torch.tensor([[1.0], [3.0]]))  # no process group: plain BatchNorm
        tensor([[-1.0000],
                [ 1.0000]], grad_fn=<NativeBatchNormBackward0>)
        >>> bn.running_mean, bn.running_var
        (tensor([0.2000]), tensor([1.1000]))
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if is_symbolic(input):
            return
        if input.dim() < 2:
            raise ValueError(
                f"input must have at least 2 dimensions (N, C, *), got shape {list(input.shape)}"
            )
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"input has {input.shape[1]} channels (shape {list(input.shape)}); this layer "
                f"has num_features={self.num_features}"
            )

    def forward(self, input: Tensor) -> Tensor:
        """Normalize ``input`` of shape ``(N, C, *)``."""
        self._check_input_dim(input)
        factor = self._blend_factor()
        use_batch_stats = self._use_batch_stats()
        track = not self.training or self.track_running_stats
        return sync_batch_norm(
            input,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
            self.process_group if self.training else None,
        )

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: Any = None) -> nn.Module:
        """Same as :func:`convert_sync_batchnorm`."""
        return convert_sync_batchnorm(module, process_group)


#: BatchNorm classes that :func:`convert_sync_batchnorm` replaces (exact types).
CONVERTIBLE: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
)


def convert_sync_batchnorm(module: nn.Module, process_group: Any = None) -> nn.Module:
    """Replace every BatchNorm1d/2d/3d in ``module`` by a :class:`SyncBatchNorm`, recursively.

    Converts ``torch.nn``'s ``BatchNorm1d/2d/3d`` and ``SyncBatchNorm`` and traintech's
    ``BatchNorm1d/2d/3d`` (exact classes, so subclasses with other semantics such as ghost
    batch norm are left alone). The new layer shares the old layer's weight and bias
    ``Parameter`` objects (so ``requires_grad`` and any optimizer references carry over), copies
    its running statistics and batch counter, and keeps its training mode.

    Args:
        module: the model (or a single BatchNorm layer).
        process_group: group the new layers reduce over; the default group when None.

    Returns:
        ``module`` with its BatchNorm layers replaced, or a new :class:`SyncBatchNorm` when
        ``module`` itself is a BatchNorm layer.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        >>> convert_sync_batchnorm(model)[1]
        SyncBatchNorm(8, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if type(module) in CONVERTIBLE:
        return _convert_one(module, process_group)
    for name, child in module.named_children():
        new_child = convert_sync_batchnorm(child, process_group)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def _convert_one(bn: nn.Module, process_group: Any) -> SyncBatchNorm:
    weight = getattr(bn, "weight", None)
    bias = getattr(bn, "bias", None)
    running_mean = getattr(bn, "running_mean", None)
    reference = weight if weight is not None else running_mean
    new = SyncBatchNorm(
        int(bn.num_features),  # type: ignore[arg-type]
        eps=float(bn.eps),  # type: ignore[arg-type]
        momentum=bn.momentum,  # type: ignore[arg-type]
        affine=bool(bn.affine),
        track_running_stats=bool(bn.track_running_stats),
        process_group=process_group,
        device=None if reference is None else reference.device,
        dtype=None if reference is None else reference.dtype,
        bias=bias is not None or not bn.affine,
    )
    if new.affine:
        with torch.no_grad():
            new.weight = weight  # type: ignore[assignment]
            new.bias = bias  # type: ignore[assignment]
    if new.track_running_stats:
        new.running_mean = bn.running_mean  # type: ignore[assignment]
        new.running_var = bn.running_var  # type: ignore[assignment]
        new.num_batches_tracked = bn.num_batches_tracked  # type: ignore[assignment]
    new.train(bn.training)
    if hasattr(bn, "qconfig"):
        new.qconfig = bn.qconfig
    return new
