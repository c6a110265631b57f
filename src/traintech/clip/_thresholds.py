"""Refusals of clipper thresholds that would silently zero every gradient."""

from __future__ import annotations


def refuse_zero_threshold(value: float, name: str, owner: str, fix: str) -> float:
    """Return ``value`` (already checked >= 0) unless it is 0, which clips every gradient to 0.

    The torch drop-in functions (``clip_grad_norm_``/``clip_grad_value_``) keep torch's
    behaviour and accept 0; a clipper *class* is a training-loop component, where a zero
    threshold means no parameter ever moves, so it is refused.

    Args:
        value: the threshold, a float >= 0.
        name: the argument's name, for the message.
        owner: the class name, for the message.
        fix: what to pass instead.

    Raises:
        ValueError: if ``value`` is 0.
    """
    if value == 0.0:
        raise ValueError(
            f"{owner}({name}=0) would scale every gradient to 0, so no parameter would ever "
            f"change; {fix}"
        )
    return value
