"""``FrozenBatchNorm2d``: BatchNorm with fixed statistics and affine, all buffers."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from traintech._checks import check_positive_int
from traintech.norm._stats import check_channels, check_eps, is_symbolic, scale_shift


def frozen_batch_norm(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float = 1e-5,
) -> Tensor:
    r"""BatchNorm with fixed statistics, as one per-channel multiply-add.

    .. math::
        y = x \cdot s + t, \qquad s = \frac{\gamma}{\sqrt{\hat\sigma^2 + \epsilon}},
        \qquad t = \beta - \hat\mu\, s

    ``s`` and ``t`` are computed in fp32 for half inputs. Gradients flow to ``input`` (and to
    ``weight``/``bias`` if they require them), never to the statistics.

    Args:
        input: ``(N, C, *)`` tensor.
        weight: ``(C,)`` scale or None.
        bias: ``(C,)`` shift or None.
        running_mean: ``(C,)`` fixed mean.
        running_var: ``(C,)`` fixed variance.
        eps: added to the variance, > 0.

    Returns:
        The normalized tensor, same shape and dtype as ``input``.

    Example:
        >>> one = torch.ones(1)
        >>> x = torch.full((1, 1, 1, 1), 3.0)
        >>> frozen_batch_norm(x, one, one, one, 4 * one, eps=1e-4).flatten().tolist()
        [1.99998...]
    """
    check_eps(eps)
    check_channels(input, running_mean.numel(), "frozen_batch_norm")
    dtype = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
    scale, shift = scale_shift(
        None if weight is None else weight.to(dtype),
        None if bias is None else bias.to(dtype),
        running_mean.detach().to(dtype),
        running_var.detach().to(dtype),
        eps,
    )
    view = [1, -1] + [1] * (input.dim() - 2)
    return torch.addcmul(shift.view(view), input.to(dtype), scale.view(view)).to(input.dtype)


# FX records a call of this function (its view shape depends on the input's rank) rather than
# tracing into it.
torch.fx.wrap("frozen_batch_norm")


class FrozenBatchNorm2d(nn.Module):
    r"""BatchNorm2d whose statistics and affine parameters are fixed buffers.

    .. math::
        y = \frac{x - \hat\mu}{\sqrt{\hat\sigma^2 + \epsilon}} \cdot \gamma + \beta

    for fine-tuning detectors and segmenters with batches too small for batch statistics: the
    layer behaves the same in training and eval, has no parameters (the optimizer cannot move
    ``weight``/``bias``) and no gradient reaches the statistics. Buffers ``weight``, ``bias``,
    ``running_mean`` and ``running_var``; a ``BatchNorm2d`` state_dict loads into it (its
    ``num_batches_tracked`` is ignored).

    Args:
        num_features: number of channels ``C``.
        eps: added to the variance, > 0.
        device: device of the buffers.
        dtype: dtype of the buffers.

    Example:
        >>> bn = FrozenBatchNorm2d(1)
        >>> bn.running_var.fill_(4.0)
        tensor([4.])
        >>> bn(torch.full((1, 1, 1, 1), 2.0)).flatten().tolist()
        [0.99999880...]
    """

    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor

    def __init__(
        self, num_features: int, eps: float = 1e-5, device: Any = None, dtype: Any = None
    ) -> None:
        check_positive_int(num_features, "num_features")
        check_eps(eps)
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.register_buffer("weight", torch.ones(num_features, **factory))
        self.register_buffer("bias", torch.zeros(num_features, **factory))
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))

    @classmethod
    def from_batchnorm(cls, bn: nn.Module) -> FrozenBatchNorm2d:
        """A frozen copy of a (torch or traintech) BatchNorm's statistics and affine parameters.

        Without running statistics (``track_running_stats=False``) the frozen layer uses mean 0
        and variance 1; without affine parameters, weight 1 and bias 0.
        """
        weight = getattr(bn, "weight", None)
        ref = weight if weight is not None else getattr(bn, "running_mean", None)
        frozen = cls(
            int(bn.num_features),  # type: ignore[arg-type]
            float(bn.eps),  # type: ignore[arg-type]
            device=None if ref is None else ref.device,
            dtype=None if ref is None else ref.dtype,
        )
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                value = getattr(bn, name, None)
                if value is not None:
                    getattr(frozen, name).copy_(value.detach())
        return frozen

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, input: Tensor) -> Tensor:
        """Normalize ``input`` with the frozen statistics."""
        if not is_symbolic(input) and input.dim() != 4:
            raise ValueError(
                f"FrozenBatchNorm2d: expected 4D input (got {input.dim()}D input of shape "
                f"{tuple(input.shape)})"
            )
        return frozen_batch_norm(
            input, self.weight, self.bias, self.running_mean, self.running_var, self.eps
        )

    def extra_repr(self) -> str:
        """``num_features, eps``."""
        return f"{self.num_features}, eps={self.eps}"
