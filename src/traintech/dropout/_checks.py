"""Dropout-specific argument checks, generator lookup and mask helpers.

Generic checks (``check_generator``, ``check_bool``, ``check_unit_interval``, ...) live in
:mod:`traintech._checks`; only what is particular to dropout stays here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from traintech import _compat
from traintech._checks import check_choice, check_unit_interval

#: The dropout variants selected by ``mode``.
MODES = ("inverted", "original")

# Attributes a checkpoint region carries for generator replay (see ``draw_generator``).
_SAVED_STATES = "_traintech_dropout_states"
_REPLAYS = "_traintech_dropout_replays"


def check_p(p: object, name: str = "p", *, allow_one: bool = True) -> float:
    """Return the dropout probability ``p`` as a float (in ``[0, 1]``, or ``[0, 1)``).

    Raises:
        TypeError: if ``p`` is not a real number.
        ValueError: if ``p`` is outside ``[0, 1]`` (or equal to 1 when ``allow_one`` is False).
    """
    value = check_unit_interval(p, name)
    if not allow_one and value == 1.0:
        raise ValueError(
            f"{name}=1.0 is not allowed here: every unit would be dropped and the kept units "
            f"cannot be rescaled; use {name} < 1"
        )
    return value


def check_mode(mode: object) -> str:
    """Return ``mode`` after checking it names a dropout variant.

    Raises:
        ValueError: if ``mode`` is not ``"inverted"`` or ``"original"``.
    """
    return str(check_choice(mode, "mode", MODES))


def check_input(input: object, name: str = "input") -> Tensor:
    """Return ``input`` after checking it is a floating-point (or complex) tensor.

    Raises:
        TypeError: if ``input`` is not a tensor or has an integer/bool dtype.
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(input).__name__}")
    if not (input.is_floating_point() or input.is_complex()):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {input.dtype}")
    return input


def resolve_generator(device: torch.device, generator: torch.Generator | None) -> torch.Generator:
    """The generator random draws on ``device`` use: ``generator`` or the device's default.

    Knows every accelerator torch knows (CUDA, XPU, MPS, HPU, privateuse1 backends) through
    ``torch.get_device_module(device).default_generators`` and ``torch.accelerator``.

    Raises:
        RuntimeError: if the device type has no default generator torch exposes.
    """
    if generator is not None:
        return generator
    if device.type in ("cpu", "meta"):
        return torch.default_generator
    get_module = getattr(torch, "get_device_module", None)  # torch >= 2.5
    module = get_module(device) if get_module is not None else getattr(torch, device.type, None)
    generators = getattr(module, "default_generators", None)
    if not generators and device.type == "mps":
        mps_gen = _compat.default_mps_generator()
        if mps_gen is not None:
            return mps_gen
    if not generators:
        raise RuntimeError(
            f"no default random generator is known for device {device}; pass "
            f"generator=torch.Generator(device={str(device)!r})"
        )
    index = device.index
    if index is None:
        accel = getattr(torch, "accelerator", None)  # torch >= 2.6
        current = accel.current_accelerator() if accel is not None else None
        if current is not None and current.type == device.type:
            index = accel.current_device_index()
        else:
            index = module.current_device() if hasattr(module, "current_device") else 0
    gen: torch.Generator = generators[index]
    return gen


def draw_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """The generator a draw uses now: ``generator``, or its replay under checkpoint recompute.

    ``torch.utils.checkpoint`` restores torch's global RNG states before recomputing, not a
    user's generator. So when a draw with ``generator`` happens in a checkpointed region, the
    generator's state is saved on the region at its first draw there; when the region is
    recomputed, the draws come from a private copy set to that state, in the same order:
    the recomputation sees the masks of the original forward. The caller's generator is not
    touched by the recomputation.

    Raises:
        RuntimeError: if a recomputation draws with a generator the original forward did not
            use (the mask could not be the same).
    """
    if generator is None or torch.compiler.is_compiling():
        return generator
    region = _compat.checkpoint_region()
    if region is None:
        return generator
    owner, recomputing = region
    states: dict[int, tuple[torch.Generator, Tensor]] | None = getattr(owner, _SAVED_STATES, None)
    if not recomputing:
        if states is None:
            states = {}
            setattr(owner, _SAVED_STATES, states)
        states.setdefault(id(generator), (generator, generator.get_state()))
        return generator
    if states is None or id(generator) not in states:
        raise RuntimeError(
            "a traintech dropout layer with its own generator is being recomputed by "
            "torch.utils.checkpoint, but its forward pass drew nothing from that generator "
            "in this checkpointed region, so the same mask cannot be redrawn. Use the same "
            "generator in forward and recomputation, or generator=None (checkpoint restores "
            "torch's global RNG state itself)."
        )
    replays: dict[tuple[int, int], torch.Generator] | None = getattr(owner, _REPLAYS, None)
    if replays is None:
        replays = {}
        setattr(owner, _REPLAYS, replays)
    key = (_compat.current_graph_task_id(), id(generator))
    replay = replays.get(key)
    if replay is None:
        replay = torch.Generator(device=generator.device)
        replay.set_state(states[id(generator)][1])
        replays[key] = replay
    return replay


def feature_mask_shape(input: Tensor, batched: bool) -> tuple[int, ...]:
    """Shape of a per-channel mask: ``(N, C, 1, ...)`` (batched) or ``(C, 1, ...)``."""
    lead = 2 if batched else 1
    return tuple(input.shape[:lead]) + (1,) * (input.dim() - lead)


def keep_like(
    input: Tensor, shape: tuple[int, ...] | torch.Size, p: float, generator: torch.Generator | None
) -> Tensor:
    """A keep mask of ``shape`` in ``input``'s dtype: 1 with probability ``1 - p``, else 0.

    Made from ``input`` (``empty_like(input)`` or ``input.new_empty(shape)``, then
    ``bernoulli_``), so it follows ``input`` through DTensor, fake tensors and tracing. Under
    ``torch.func`` transforms it is drawn out of place from a fresh tensor of the per-sample
    ``shape``, which ``vmap`` batches as asked (``randomness="different"`` or ``"same"``).
    """
    if not torch.compiler.is_compiling() and _compat.functorch_transform_active():
        base = torch.empty(shape, dtype=input.dtype, device=input.device)
        return torch.bernoulli(base, 1.0 - p, generator=generator)
    full = tuple(shape) == tuple(input.shape)
    base = torch.empty_like(input) if full else input.new_empty(shape)
    return base.bernoulli_(1.0 - p, generator=generator)


def mul(input: Tensor, factor: Tensor | float, inplace: bool) -> Tensor:
    """``input * factor``, in place when ``inplace``."""
    return input.mul_(factor) if inplace else input * factor
