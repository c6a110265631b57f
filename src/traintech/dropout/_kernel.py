r"""The element-wise dropout kernel: a bit-sliced Bernoulli sampler and a low-memory autograd op.

Torch's CPU dropout spends most of its time drawing one Bernoulli sample per element. On CPU,
for tensors of at least :data:`FAST_MIN_NUMEL` elements, this kernel instead

1. draws 64-bit words from a NumPy ``SFC64`` stream seeded by one 63-bit draw from the torch
   generator (so ``torch.manual_seed`` / ``generator=`` still control every mask);
2. compares 64 uniforms with :math:`p` at once, bit plane by bit plane ("bit-sliced"), most
   significant bit first: element :math:`e` is dropped iff :math:`U_e < p` where
   :math:`U_e = 0.u_1u_2u_3\ldots` in binary. After :math:`k` planes an element is still
   undecided with probability :math:`2^{-k}`, so later planes are drawn only for the
   64-element groups that still have undecided elements. :math:`p` is used to 32 bits
   (the drop probability is exact to :math:`2^{-32}`); at most about 10 random bits per
   element are drawn (1 for ``p = 0.5``), against 32 for a float32 uniform;
3. keeps the drop mask bit-packed (1 bit per element: 8x less than a bool mask, 32x less
   than the float mask torch's CPU dropout saves) and
   applies it by gathering rows of a ``(256, 8)`` table of ``{0, scale}`` values indexed by
   the mask bytes, then multiplying: :math:`y = x \cdot m \cdot s` in two passes.

With ``low_memory=True`` nothing but the 63-bit seed is saved for backward: the mask is
regenerated from it.

The kernel is a *fast path*, not a replacement: it runs only for plain, dense, contiguous,
floating-point CPU tensors of at least :data:`FAST_MIN_NUMEL` elements, in eager mode (see
:func:`use_fast_path`). It is registered as the custom ops ``traintech::bit_dropout``,
``traintech::bit_dropout_lowmem`` and ``traintech::apply_bits`` (with fake-tensor kernels and
autograd formulas; the backward, ``grad * keep * scale``, is ``apply_bits`` itself, so double
backward works; ``apply_bits`` has a vmap rule so batched backward works). Everything else
(CUDA and other accelerators, small tensors, DTensor and other subclasses, meta/fake tensors,
``torch.func`` transforms, forward-mode AD, FX/export tracing, ``torch.compile``) runs torch's
own ops, chosen in :mod:`traintech.dropout.functional`.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch
from torch import Tensor

from traintech._dispatch import plain_eager_cpu
from traintech.dropout._checks import resolve_generator

#: Smallest CPU tensor that takes the bit-sliced path (below it Python overhead dominates).
FAST_MIN_NUMEL = 1 << 17

#: Bits of ``p`` the bit-sliced comparison uses (drop probability exact to 2**-PRECISION).
PRECISION = 32

# Bit planes compared for all groups, then for the still-undecided groups only.
_PHASES = ((0, 8), (8, 16), (16, PRECISION))


def p_bits(p: float) -> list[int]:
    """The first :data:`PRECISION` binary digits of ``p`` in ``[0, 1)`` (most significant first)."""
    t = int(p * 2.0**PRECISION)  # exact: scaling a float64 by a power of two
    return [(t >> (PRECISION - 1 - k)) & 1 for k in range(PRECISION)]


# Random words are drawn in chunks below glibc's mmap threshold and copied into one buffer:
# a fresh multi-page array per bit plane would cost a page fault per 4 KiB.
_CHUNK = 8192


def _raw_words(stream: np.random.SFC64, buffer: np.ndarray, n: int) -> Tensor:
    out = buffer[:n]
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        out[start:stop] = stream.random_raw(stop - start)
    return torch.from_numpy(out.view(np.int64))


def drop_words(n_words: int, p: float, seed: int) -> Tensor:
    """Bit-packed drop mask of ``n_words`` int64 words drawn from ``seed``.

    Bit ``e % 64`` of word ``e // 64`` is set (element ``e`` dropped) with probability ``p``
    (to :data:`PRECISION` bits).

    A random word's bit ``w = 1`` stands for a uniform's bit ``u = 0`` (both are fair coins).
    For a 1-digit of ``p``, ``u = 0`` decides "less" (dropped); for a 0-digit, ``u = 1``
    decides "greater" (kept); ``eq`` tracks the elements still equal to ``p`` so far.
    """
    bits = p_bits(p)
    last = max((k for k, b in enumerate(bits) if b), default=-1)
    stream = np.random.SFC64(seed)
    lt = torch.zeros(n_words, dtype=torch.int64)
    eq = torch.full((n_words,), -1, dtype=torch.int64)
    buffer = np.empty(n_words, dtype=np.uint64)
    for phase, (lo, hi) in enumerate(_PHASES):
        if lo > last:
            break
        if phase == 0:
            idx = None
            sub_lt, sub_eq = lt, eq
        else:
            idx = torch.nonzero(eq).squeeze(1)
            if idx.numel() == 0:
                break
            sub_lt, sub_eq = lt[idx], eq[idx]
        tmp = torch.empty_like(sub_eq)
        for level in range(lo, min(hi, last + 1)):
            w = _raw_words(stream, buffer, sub_eq.numel())
            if bits[level]:
                torch.bitwise_and(sub_eq, w, out=tmp)
                sub_lt.bitwise_or_(tmp)
                sub_eq.bitwise_xor_(tmp)
            else:
                sub_eq.bitwise_and_(w)
        if idx is not None:
            lt[idx] = sub_lt
            eq[idx] = sub_eq
    return lt


def _table(scale: float, dtype: torch.dtype) -> Tensor:
    # Row b holds, for bit i of byte b, 0 where the bit is set (dropped) and `scale` elsewhere.
    codes = torch.arange(256, dtype=torch.int64).unsqueeze(1)
    dropped = (codes >> torch.arange(8, dtype=torch.int64)) & 1
    return (1 - dropped).to(dtype) * scale


def words_factors(t: Tensor, words: Tensor, scale: float) -> Tensor:
    """The factors ``keep * scale`` of the bit-packed drop mask ``words``, shaped like ``t``."""
    index = words.view(torch.uint8).to(torch.int32)
    factors = torch.index_select(_table(scale, t.dtype), 0, index).view(-1)[: t.numel()]
    return factors.view(t.shape)


def apply_words(t: Tensor, words: Tensor, scale: float) -> Tensor:
    """``t * keep * scale`` for the bit-packed drop mask ``words`` (a new contiguous tensor)."""
    return words_factors(t, words, scale).mul_(t)


_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def use_fast_path(x: Tensor) -> bool:
    """Whether ``x`` takes the bit-sliced kernel: a plain, eager, dense CPU tensor, big enough.

    The shared part is :func:`traintech._dispatch.plain_eager_cpu`: False for tensor subclasses
    (DTensor, fake/functional tensors, nested tensors), non-CPU tensors, tensors wrapped by
    ``torch.func`` transforms or under one, under forward-mode AD, ``torch.compile``,
    TorchScript, FX/export tracing or any dispatch mode. Dropout adds: a floating dtype, at least
    :data:`FAST_MIN_NUMEL` elements, contiguous, on a little-endian host (the mask bytes index
    the table in memory order). Those cases run torch's ops.
    """
    if not plain_eager_cpu(x):
        return False
    return (
        x.dtype in _FLOAT_DTYPES
        and x.numel() >= FAST_MIN_NUMEL
        and sys.byteorder == "little"
        and x.is_contiguous()
    )


def _n_words(numel: int) -> int:
    return (numel + 63) // 64


# --- the custom ops ------------------------------------------------------------------------


@torch.library.custom_op("traintech::apply_bits", mutates_args=(), device_types="cpu")
def apply_bits(t: Tensor, words: Tensor, scale: float) -> Tensor:
    """``t * keep * scale`` for the bit-packed drop mask ``words`` (a new contiguous tensor)."""
    return apply_words(t, words, scale)


@apply_bits.register_fake
def _(t: Tensor, words: Tensor, scale: float) -> Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


def _apply_bits_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    _, words, scale = inputs
    ctx.save_for_backward(words)
    ctx.scale = scale


def _apply_bits_backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
    (words,) = ctx.saved_tensors
    return apply_bits(grad, words, ctx.scale), None, None


apply_bits.register_autograd(_apply_bits_backward, setup_context=_apply_bits_setup)


def _apply_bits_vmap(
    info: Any, in_dims: tuple[Any, ...], t: Tensor, words: Tensor, scale: float
) -> Any:
    # Batched over t only (a mask is one draw): every sample gets the same mask, as eagerly.
    if in_dims[1] is not None:
        raise RuntimeError("traintech::apply_bits: a batched drop mask is not supported under vmap")
    t_dim = in_dims[0]
    if t_dim is None:
        return apply_bits(t, words, scale), None
    t = t.movedim(t_dim, 0)
    factors = words_factors(t[0], words, scale)
    return t * factors, 0


if hasattr(apply_bits, "register_vmap"):  # torch >= 2.5 (no batched backward on 2.4)
    apply_bits.register_vmap(_apply_bits_vmap)


@torch.library.custom_op("traintech::bit_dropout", mutates_args=(), device_types="cpu")
def bit_dropout(x: Tensor, p: float, scale: float, seed: int) -> tuple[Tensor, Tensor]:
    """Bit-sliced dropout of ``x``: ``(x * keep * scale, packed drop mask)``."""
    words = drop_words(_n_words(x.numel()), p, seed)
    return apply_words(x, words, scale), words


@bit_dropout.register_fake
def _(x: Tensor, p: float, scale: float, seed: int) -> tuple[Tensor, Tensor]:
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return out, x.new_empty((_n_words(x.numel()),), dtype=torch.int64)


def _bit_dropout_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    ctx.save_for_backward(output[1])
    ctx.scale = inputs[2]
    ctx.mark_non_differentiable(output[1])


def _bit_dropout_backward(
    ctx: Any, grad: Tensor, grad_words: Tensor | None
) -> tuple[Tensor, None, None, None]:
    (words,) = ctx.saved_tensors
    return apply_bits(grad, words, ctx.scale), None, None, None


bit_dropout.register_autograd(_bit_dropout_backward, setup_context=_bit_dropout_setup)


@torch.library.custom_op("traintech::bit_dropout_lowmem", mutates_args=(), device_types="cpu")
def bit_dropout_lowmem(x: Tensor, p: float, scale: float, seed: int) -> Tensor:
    """Bit-sliced dropout saving only ``seed`` for backward (the mask is regenerated)."""
    return apply_words(x, drop_words(_n_words(x.numel()), p, seed), scale)


@bit_dropout_lowmem.register_fake
def _(x: Tensor, p: float, scale: float, seed: int) -> Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _lowmem_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    _, ctx.p, ctx.scale, ctx.seed = inputs


@torch.library.custom_op("traintech::regen_words", mutates_args=(), device_types="cpu")
def regen_words(like: Tensor, p: float, seed: int) -> Tensor:
    """The packed drop mask for ``like``'s elements drawn from ``seed`` (low-memory replay)."""
    return drop_words(_n_words(like.numel()), p, seed)


@regen_words.register_fake
def _(like: Tensor, p: float, seed: int) -> Tensor:
    return like.new_empty((_n_words(like.numel()),), dtype=torch.int64)


def _lowmem_backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
    words = regen_words(grad, ctx.p, ctx.seed)
    return apply_bits(grad, words, ctx.scale), None, None, None


bit_dropout_lowmem.register_autograd(_lowmem_backward, setup_context=_lowmem_setup)


def fast_dropout(
    x: Tensor,
    p: float,
    scale: float,
    generator: torch.Generator | None,
    *,
    low_memory: bool = False,
    inplace: bool = False,
) -> Tensor:
    """``x * keep * scale`` through the bit-sliced kernel (call only if :func:`use_fast_path`).

    One 63-bit seed is drawn from ``generator`` (or torch's default CPU generator), so
    ``torch.manual_seed`` and ``generator=`` control the mask. In place, the factors are
    applied with ``Tensor.mul_`` (autograd saves them as it saves any ``mul_`` operand).
    """
    gen = resolve_generator(x.device, generator)
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=gen).item())
    if inplace:
        words = drop_words(_n_words(x.numel()), p, seed)
        return x.mul_(words_factors(x, words, scale))
    if low_memory:
        return bit_dropout_lowmem(x, p, scale, seed)
    return bit_dropout(x, p, scale, seed)[0]


# --- low-memory mode elsewhere in eager code: save the generator state, replay it ----------


def _keep_factors(
    shape: torch.Size,
    p: float,
    scale: float,
    dtype: torch.dtype,
    device: torch.device,
    gen: torch.Generator,
) -> Tensor:
    keep = torch.empty(shape, dtype=dtype, device=device).bernoulli_(1.0 - p, generator=gen)
    return keep.div_(1.0 - p) if scale != 1.0 else keep


class ReplayDropout(torch.autograd.Function):
    """``x * factors`` saving the generator state the factors were drawn from, not the mask.

    Backward redraws the factors from a private generator set to that state and computes
    ``grad * factors`` with differentiable ops, so double backward works.
    """

    @staticmethod
    def forward(x: Tensor, factors: Tensor, p: float, scale: float, state: Tensor) -> Tensor:
        """The masked, scaled ``x``."""
        return x * factors

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        """Keep the generator state and the shape, not the mask."""
        x, _, ctx.p, ctx.scale, ctx.state = inputs
        ctx.shape, ctx.device = x.shape, x.device

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:
        """``grad * keep * scale`` with the regenerated mask."""
        gen = torch.Generator(device=ctx.device)
        gen.set_state(ctx.state)
        factors = _keep_factors(ctx.shape, ctx.p, ctx.scale, grad.dtype, ctx.device, gen)
        return grad * factors, None, None, None, None


def replay_dropout(x: Tensor, p: float, scale: float, generator: torch.Generator | None) -> Tensor:
    """Low-memory dropout for eager tensors off the fast path (CUDA, small CPU tensors)."""
    gen = resolve_generator(x.device, generator)
    state = gen.get_state()
    factors = _keep_factors(x.shape, p, scale, x.dtype, x.device, gen)
    out: Tensor = ReplayDropout.apply(x, factors, p, scale, state)
    return out
