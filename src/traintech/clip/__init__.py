"""Gradient clipping: drop-in functions, stateful clippers and the guarded optimizer step."""

from traintech.clip._agc import AGC
from traintech.clip._ema import EMAClip
from traintech.clip._protocol import Clipper, ClipResult
from traintech.clip._quantile import QuantileClip
from traintech.clip._zclip import ZClip

__all__ = ["AGC", "ClipResult", "Clipper", "EMAClip", "QuantileClip", "ZClip"]
