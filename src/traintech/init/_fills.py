r"""Torch's plain fills, with torch's arguments and numbers.

``uniform_``, ``normal_``, ``constant_``, ``ones_``, ``zeros_``, ``eye_``, ``dirac_``, ``sparse_``.

Each fills the tensor in place under ``torch.no_grad()`` and returns it, exactly as its
``torch.nn.init`` namesake; with the same generator state the numbers are bit-identical to
torch's. The additions: arguments are checked before the tensor is touched (a ``ValueError`` or
``TypeError`` naming the argument, where torch fails inside the kernel or not at all), and
``sparse_`` draws its zero pattern from ``generator`` too (torch's draws it from the global RNG
even when a generator is given).
"""

from __future__ import annotations

import math
from numbers import Integral, Number, Real

import torch
from torch import Tensor

from .._checks import (
    check_generator_device,
    check_nonneg,
    check_positive_int,
    check_tensor,
    check_unit_interval,
)

__all__ = ["constant_", "dirac_", "eye_", "normal_", "ones_", "sparse_", "uniform_", "zeros_"]


def _finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r})")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return out


def uniform_(
    tensor: Tensor, a: float = 0.0, b: float = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    r"""Fill ``tensor`` from :math:`\mathcal{U}(a, b)`, as ``torch.nn.init.uniform_``.

    .. math::
        w \sim \mathcal{U}(a, b), \qquad E[w] = \frac{a + b}{2}, \qquad
        \operatorname{Var}(w) = \frac{(b - a)^2}{12}

    Same draw as torch (``tensor.uniform_(a, b, generator=generator)``), so the same generator
    state gives the same numbers.

    Args:
        tensor: an n-dimensional tensor.
        a: the lower bound, finite.
        b: the upper bound, finite, ``>= a``.
        generator: the torch Generator to sample from (default: the global one).

    Returns:
        ``tensor``, filled under ``torch.no_grad()``.

    Raises:
        TypeError: for a non-tensor ``tensor``, non-numeric bounds or a bad ``generator``.
        ValueError: for a non-finite bound, ``a > b`` (torch: a ``RuntimeError`` from the
            kernel), or a ``generator`` on another device type than ``tensor``.

    Example:
        >>> uniform_(torch.empty(2, 3), -1.0, 1.0, generator=torch.Generator().manual_seed(0))
        tensor([[-0.0075,  0.5364, -0.8230],
                [-0.7359, -0.3852,  0.2682]])
    """
    check_tensor(tensor, "tensor")
    low, high = _finite(a, "a"), _finite(b, "b")
    if low > high:
        raise ValueError(f"uniform_ needs a <= b, got a={a!r}, b={b!r}")
    check_generator_device(generator, (tensor,))
    with torch.no_grad():
        return tensor.uniform_(low, high, generator=generator)


def normal_(
    tensor: Tensor, mean: float = 0.0, std: float = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    r"""Fill ``tensor`` from :math:`\mathcal{N}(\text{mean}, \text{std}^2)`, as torch's ``normal_``.

    Same draw as ``torch.nn.init.normal_`` (``tensor.normal_(mean, std, generator=generator)``);
    ``std=0`` fills with ``mean``.

    Args:
        tensor: an n-dimensional tensor.
        mean: the mean, finite.
        std: the standard deviation, finite and ``>= 0``.
        generator: the torch Generator to sample from (default: the global one).

    Returns:
        ``tensor``, filled under ``torch.no_grad()``.

    Raises:
        TypeError: for a non-tensor ``tensor``, non-numeric ``mean``/``std`` or a bad
            ``generator``.
        ValueError: for a non-finite ``mean``, a negative or non-finite ``std`` (torch: a
            ``RuntimeError`` from the kernel), or a ``generator`` on another device type.

    Example:
        >>> normal_(torch.empty(2, 3), 0.0, 0.1, generator=torch.Generator().manual_seed(0))
        tensor([[ 0.1541, -0.0293, -0.2179],
                [ 0.0568, -0.1085, -0.1399]])
    """
    check_tensor(tensor, "tensor")
    mu = _finite(mean, "mean")
    sigma = check_nonneg(std, "std", allow_inf=False)
    check_generator_device(generator, (tensor,))
    with torch.no_grad():
        return tensor.normal_(mu, sigma, generator=generator)


def constant_(tensor: Tensor, val: float) -> Tensor:
    r"""Fill ``tensor`` with ``val`` (:math:`w = \text{val}`), as ``torch.nn.init.constant_``.

    Args:
        tensor: an n-dimensional tensor.
        val: the value: a number or a 0-dim tensor (inf and NaN are written as given, as
            torch does).

    Returns:
        ``tensor``, filled under ``torch.no_grad()``.

    Raises:
        TypeError: for a non-tensor ``tensor`` or a ``val`` that is not a number or a 0-dim
            tensor.

    Example:
        >>> constant_(torch.empty(2, 3), 0.25)
        tensor([[0.2500, 0.2500, 0.2500],
                [0.2500, 0.2500, 0.2500]])
    """
    check_tensor(tensor, "tensor")
    if not (isinstance(val, Number) or (isinstance(val, Tensor) and val.dim() == 0)):
        raise TypeError(
            f"val must be a number or a 0-dim tensor, got {type(val).__name__} ({val!r})"
        )
    with torch.no_grad():
        return tensor.fill_(val)


def ones_(tensor: Tensor) -> Tensor:
    r"""Fill ``tensor`` with 1 (:math:`w = 1`), as ``torch.nn.init.ones_``.

    Args:
        tensor: an n-dimensional tensor.

    Returns:
        ``tensor``, filled under ``torch.no_grad()``.

    Raises:
        TypeError: for a non-tensor ``tensor``.

    Example:
        >>> ones_(torch.empty(2, 2, dtype=torch.int64))
        tensor([[1, 1],
                [1, 1]])
    """
    check_tensor(tensor, "tensor")
    with torch.no_grad():
        return tensor.fill_(1.0)


def zeros_(tensor: Tensor) -> Tensor:
    r"""Fill ``tensor`` with 0 (:math:`w = 0`), as ``torch.nn.init.zeros_``.

    Args:
        tensor: an n-dimensional tensor.

    Returns:
        ``tensor``, filled under ``torch.no_grad()``.

    Raises:
        TypeError: for a non-tensor ``tensor``.

    Example:
        >>> zeros_(torch.full((2, 2), 7.0))
        tensor([[0., 0.],
                [0., 0.]])
    """
    check_tensor(tensor, "tensor")
    with torch.no_grad():
        return tensor.zero_()


def _check_dims(tensor: Tensor, allowed: tuple[int, ...], torch_text: str) -> None:
    if tensor.dim() not in allowed:
        raise ValueError(f"{torch_text} (tensor has shape {tuple(tensor.shape)})")


def eye_(tensor: Tensor) -> Tensor:
    r"""Fill a 2-d ``tensor`` with the identity matrix, as ``torch.nn.init.eye_``.

    .. math::
        w_{ij} = \begin{cases} 1 & i = j \\ 0 & i \ne j \end{cases}

    A ``Linear`` layer with this weight passes its first ``min(in, out)`` inputs through
    unchanged (a rectangular matrix keeps as many as it can).

    Args:
        tensor: a 2-dimensional tensor.

    Returns:
        ``tensor``, filled under ``torch.no_grad()``.

    Raises:
        TypeError: for a non-tensor ``tensor``.
        ValueError: if ``tensor`` is not 2-dimensional (torch's message, plus the shape).

    Example:
        >>> eye_(torch.empty(2, 3))
        tensor([[1., 0., 0.],
                [0., 1., 0.]])
    """
    check_tensor(tensor, "tensor")
    _check_dims(tensor, (2,), "Only tensors with 2 dimensions are supported")
    with torch.no_grad():
        torch.eye(*tensor.shape, out=tensor, requires_grad=tensor.requires_grad)
    return tensor


def dirac_(tensor: Tensor, groups: int = 1) -> Tensor:
    r"""Fill a 3/4/5-d conv weight with the Dirac delta, as ``torch.nn.init.dirac_``.

    With ``O = size(0) / groups`` output channels per group and the kernel centre
    :math:`c = (\lfloor k_1/2 \rfloor, \ldots)`:

    .. math::
        w[gO + d,\, d,\, c] = 1 \quad (0 \le g < \text{groups},\ 0 \le d < \min(O, \text{size}(1))),
        \qquad 0 \text{ elsewhere}

    A convolution with this weight (odd kernel, ``padding=k // 2``) passes as many input
    channels of each group through unchanged as it has outputs for. Written with one indexed
    assignment instead of torch's per-channel loop; the values are the same.

    Args:
        tensor: a 3, 4 or 5-dimensional tensor ``(out, in / groups, *kernel)``.
        groups: number of groups of the conv layer, an int >= 1 dividing ``size(0)``.

    Returns:
        ``tensor``, filled under ``torch.no_grad()``; meta tensors untouched.

    Raises:
        TypeError: for a non-tensor ``tensor`` or a non-int ``groups``.
        ValueError: for another number of dimensions, ``groups < 1``, or ``size(0)`` not
            divisible by ``groups`` (torch's messages, plus the values).

    Example:
        >>> dirac_(torch.empty(2, 2, 3))
        tensor([[[0., 1., 0.],
                 [0., 0., 0.]],
        <BLANKLINE>
                [[0., 0., 0.],
                 [0., 1., 0.]]])
    """
    check_tensor(tensor, "tensor")
    _check_dims(tensor, (3, 4, 5), "Only tensors with 3, 4, or 5 dimensions are supported")
    if isinstance(groups, Integral) and not isinstance(groups, bool):
        groups = int(groups)  # numpy integers, as torch accepts them
    groups = check_positive_int(groups, "groups")
    if tensor.size(0) % groups != 0:
        raise ValueError(
            f"dim 0 must be divisible by groups (size(0) = {tensor.size(0)}, groups = {groups})"
        )
    if tensor.is_meta:
        return tensor
    per_group = tensor.size(0) // groups
    keep = min(per_group, tensor.size(1))
    with torch.no_grad():
        tensor.zero_()
        if keep == 0:
            return tensor
        d = torch.arange(keep, device=tensor.device)
        g = torch.arange(groups, device=tensor.device)
        rows = (g[:, None] * per_group + d[None, :]).reshape(-1)
        cols = d.repeat(groups)
        centre = [size // 2 for size in tensor.shape[2:]]
        index: tuple[Tensor | int, ...] = (rows, cols, *centre)
        tensor[index] = 1
    return tensor


def sparse_(
    tensor: Tensor,
    sparsity: float,
    std: float = 0.01,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Fill a 2-d ``tensor`` as a sparse matrix (Martens 2010), as ``torch.nn.init.sparse_``.

    Every entry is drawn from :math:`\mathcal{N}(0, \text{std}^2)`, then in each column
    :math:`\lceil \text{sparsity} \cdot \text{rows} \rceil` entries, chosen uniformly at random
    (the first ones of a random permutation of the rows, one permutation per column), are set
    to 0. Martens, "Deep learning via Hessian-free optimization", ICML 2010.

    Difference from torch, on purpose: the permutations are drawn from ``generator`` as well.
    Torch draws them from the global RNG even when a generator is given, so its result is not
    determined by the generator and it disturbs the global stream. With ``generator=None`` both
    use the global RNG in the same order and give the same numbers; with a generator the
    normal values are torch's and the zero pattern is the generator's.

    Args:
        tensor: a 2-dimensional tensor.
        sparsity: the fraction of each column set to zero, in ``[0, 1]``.
        std: the standard deviation of the non-zero values, finite and ``>= 0``.
        generator: the torch Generator to sample from (default: the global one).

    Returns:
        ``tensor``, filled under ``torch.no_grad()``; meta tensors untouched.

    Raises:
        TypeError: for a non-tensor ``tensor``, non-numeric ``sparsity``/``std`` or a bad
            ``generator``.
        ValueError: if ``tensor`` is not 2-dimensional, ``sparsity`` is outside ``[0, 1]``,
            ``std`` is negative or not finite, or ``generator`` is on another device type.

    Example:
        >>> w = sparse_(torch.empty(4, 3), 0.5, generator=torch.Generator().manual_seed(0))
        >>> (w == 0).sum(dim=0)  # ceil(0.5 * 4) zeros in each column
        tensor([2, 2, 2])
    """
    check_tensor(tensor, "tensor")
    _check_dims(tensor, (2,), "Only tensors with 2 dimensions are supported")
    sparsity = check_unit_interval(sparsity, "sparsity")
    std = check_nonneg(std, "std", allow_inf=False)
    check_generator_device(generator, (tensor,))
    if tensor.is_meta:
        return tensor
    rows, cols = tensor.shape
    num_zeros = math.ceil(sparsity * rows)
    device = generator.device if generator is not None else torch.device("cpu")
    with torch.no_grad():
        tensor.normal_(0, std, generator=generator)
        for col in range(cols):
            order = torch.randperm(rows, generator=generator, device=device)
            tensor[order[:num_zeros].to(tensor.device), col] = 0
    return tensor
