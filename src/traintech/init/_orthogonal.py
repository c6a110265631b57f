"""(Semi-)orthogonal initialisation (Saxe et al., 2013)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_generator_device, check_tensor
from ._fans_and_gain import check_gain

__all__ = ["orthogonal_"]


def orthogonal_(
    tensor: Tensor,
    gain: float = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Fill ``tensor`` with a (semi-)orthogonal matrix times ``gain``, as torch's ``orthogonal_``.

    The tensor is viewed as a matrix :math:`W` of shape ``(rows, cols)`` with
    ``rows = size(0)`` and the trailing dimensions flattened (conv kernels). A Gaussian matrix
    :math:`A` is drawn, :math:`A = QR` is factored and the signs of :math:`R`'s diagonal are
    moved into :math:`Q`, which makes :math:`Q` Haar-distributed (Mezzadri 2007,
    https://arxiv.org/abs/math-ph/0609050). Then

    .. math::
        W W^\top = \text{gain}^2 I_{\text{rows}} \ (\text{rows} \le \text{cols}), \qquad
        W^\top W = \text{gain}^2 I_{\text{cols}} \ (\text{rows} > \text{cols})

    Saxe et al., 2013, https://arxiv.org/abs/1312.6120 . For float32/float64 the sampling is
    torch's, so the same ``generator`` state gives the same matrix. For float16/bfloat16 the
    Gaussian is drawn and factored in float32 (torch's QR has no half-precision kernel) and
    the result is rounded once.

    Args:
        tensor: an n-dimensional tensor, n >= 2.
        gain: scaling factor, >= 0 (torch does not check; a negative one is a ``ValueError``).
        generator: the torch Generator to sample from (default: the global one).

    Returns:
        ``tensor``, filled under ``torch.no_grad()``; zero-element and meta tensors untouched.

    Raises:
        TypeError: for a non-tensor ``tensor`` or a ``generator`` that is not a
            ``torch.Generator`` (nor None).
        ValueError: for fewer than 2 dimensions or a negative ``gain``; or a ``generator``
            on another device type than ``tensor``.

    Example:
        >>> w = orthogonal_(torch.empty(3, 5), generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(w @ w.T, torch.eye(3), atol=1e-6)
        True
    """
    check_tensor(tensor, "tensor")
    check_generator_device(generator, (tensor,))
    if tensor.dim() < 2:
        raise ValueError(
            "Only tensors with 2 or more dimensions are supported "
            f"(tensor has shape {tuple(tensor.shape)})"
        )
    check_gain(gain)
    if tensor.numel() == 0 or tensor.is_meta:
        return tensor
    rows = tensor.size(0)
    cols = tensor.numel() // rows
    work_dtype = tensor.dtype
    if work_dtype in (torch.float16, torch.bfloat16):
        work_dtype = torch.float32
    with torch.no_grad():
        sample = torch.empty((rows, cols), dtype=work_dtype, device=tensor.device)
        sample.normal_(0, 1, generator=generator)
        wide = rows < cols
        if wide:
            sample = sample.t()
        q, r = torch.linalg.qr(sample)
        # Columns of q scaled by sign(diag r); a zero diagonal (probability 0) keeps sign +1.
        signs = torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q.dtype)
        q = q * signs
        if wide:
            q = q.t()
        tensor.view(rows, cols).copy_(q)
        tensor.mul_(gain)
    return tensor
