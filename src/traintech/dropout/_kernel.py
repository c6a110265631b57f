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
regenerated from it. Elsewhere (CUDA, small tensors, big-endian hosts) the mask comes from
``torch.rand(generator=...) >= p`` as a bool tensor, and the low-memory mode saves the
generator's state instead of the mask.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch
from torch import Tensor

from traintech.dropout._checks import keep_mask, resolve_generator

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


def _use_words(x: Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.numel() >= FAST_MIN_NUMEL
        and sys.byteorder == "little"
        and x.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    )


class _Mask:
    """A drop mask in one of two forms, able to apply itself and to forget / rebuild itself."""

    def __init__(
        self, x: Tensor, p: float, generator: torch.Generator | None, replayable: bool
    ) -> None:
        self.shape = x.shape
        self.device = x.device
        self.p = p
        self.packed = _use_words(x)
        gen = generator
        if self.packed:
            gen = resolve_generator(x.device, generator)
            self.seed = int(torch.randint(0, 2**63 - 1, (1,), generator=gen).item())
        elif replayable:  # the generator's state, to replay the draw in backward
            gen = resolve_generator(x.device, generator)
            self.state = gen.get_state()
            self.gen_device = gen.device
        self.mask: Tensor | None = self._build(gen, replay=False)

    def _build(self, gen: torch.Generator | None, replay: bool) -> Tensor:
        if self.packed:
            n_words = (int(torch.Size(self.shape).numel()) + 63) // 64
            return drop_words(n_words, self.p, self.seed)
        if replay:  # replay the draw from the saved state on a private generator
            gen = torch.Generator(device=self.gen_device)
            gen.set_state(self.state)
        return keep_mask(self.shape, self.p, self.device, gen)

    def get(self) -> Tensor:
        """The mask, rebuilt from the saved seed or generator state if it was forgotten."""
        if self.mask is None:
            self.mask = self._build(None, replay=True)
        return self.mask

    def apply(self, t: Tensor, scale: float) -> Tensor:
        mask = self.get()
        if self.packed:
            return apply_words(t, mask, scale)
        return t * (mask.to(t.dtype) * scale)

    def apply_(self, t: Tensor, scale: float) -> Tensor:
        mask = self.get()
        if self.packed:
            return t.mul_(words_factors(t, mask, scale))
        return t.mul_(mask.to(t.dtype) * scale)


class DropoutFunction(torch.autograd.Function):
    """Element-wise dropout whose backward uses a bit-packed mask or regenerates it."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        p: float,
        scale: float,
        generator: torch.Generator | None,
        low_memory: bool,
        inplace: bool,
    ) -> Tensor:
        mask = _Mask(x, p, generator, replayable=low_memory)
        out = mask.apply_(x, scale) if inplace else mask.apply(x, scale)
        if inplace:
            ctx.mark_dirty(x)
        if not low_memory:  # through save_for_backward, so saved-tensor hooks see it
            ctx.save_for_backward(mask.get())
        mask.mask = None
        ctx.mask = mask
        ctx.low_memory = low_memory
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        mask = ctx.mask
        if not ctx.low_memory:
            mask.mask = ctx.saved_tensors[0]
        grad_in = mask.apply(grad, ctx.scale)
        mask.mask = None
        return grad_in, None, None, None, None, None


def mask_scale(
    x: Tensor,
    p: float,
    scale: float,
    generator: torch.Generator | None,
    *,
    low_memory: bool = False,
    inplace: bool = False,
) -> Tensor:
    """``x * keep * scale`` with ``keep ~ Bernoulli(1 - p)`` element-wise, ``0 < p < 1``.

    Inside ``torch.compile`` the mask is drawn with plain tensor ops (the compiler traces and
    fuses them, and autograd saves what it needs); eagerly the custom function runs.
    """
    if torch.compiler.is_compiling():
        factors = keep_mask(x.shape, p, x.device, generator).to(x.dtype) * scale
        return x.mul_(factors) if inplace else x * factors
    return DropoutFunction.apply(x, p, scale, generator, low_memory, inplace)
