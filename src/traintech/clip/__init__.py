"""Gradient clipping: drop-in functions, stateful clippers and the guarded optimizer step."""

from traintech.clip._protocol import Clipper, ClipResult

__all__ = ["ClipResult", "Clipper"]
