"""Gradient clipping: drop-in functions, stateful clippers and the guarded optimizer step."""

from traintech.clip._functional import clip_grad_norm_, clip_grad_value_, grad_norm
from traintech.clip._guarded import GuardedStep, StepReport, TooManySkippedStepsError
from traintech.clip._norm_clip import NormClip
from traintech.clip._per_layer import clip_grad_norm_per_layer_
from traintech.clip._protocol import Clipper, ClipResult
from traintech.clip._value_clip import ValueClip

__all__ = [
    "ClipResult",
    "Clipper",
    "GuardedStep",
    "NormClip",
    "StepReport",
    "TooManySkippedStepsError",
    "ValueClip",
    "clip_grad_norm_",
    "clip_grad_norm_per_layer_",
    "clip_grad_value_",
    "grad_norm",
]
