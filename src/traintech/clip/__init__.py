"""Gradient clipping: drop-in functions, stateful clippers and the guarded optimizer step."""

from traintech.clip._agc import AGC
from traintech.clip._ema import EMAClip
from traintech.clip._functional import clip_grad_norm_, clip_grad_value_, grad_norm
from traintech.clip._guarded import GuardedStep, StepReport, TooManySkippedStepsError
from traintech.clip._guarded_optimizer import GuardedOptimizer
from traintech.clip._norm_clip import NormClip
from traintech.clip._per_layer import clip_grad_norm_per_layer_
from traintech.clip._protocol import Clipper, ClipResult
from traintech.clip._quantile import QuantileClip
from traintech.clip._skip_warnings import SkippedStepWarning
from traintech.clip._value_clip import ValueClip
from traintech.clip._zclip import ZClip

__all__ = [
    "AGC",
    "ClipResult",
    "Clipper",
    "EMAClip",
    "GuardedOptimizer",
    "GuardedStep",
    "NormClip",
    "QuantileClip",
    "SkippedStepWarning",
    "StepReport",
    "TooManySkippedStepsError",
    "ValueClip",
    "ZClip",
    "clip_grad_norm_",
    "clip_grad_norm_per_layer_",
    "clip_grad_value_",
    "grad_norm",
]
