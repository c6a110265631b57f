"""Calling a model on a user batch: a tensor, a tuple/list of positional args, or a dict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

__all__ = ["call_model", "check_batch", "first_tensor"]


def check_batch(batch: object) -> None:
    """Raise ``TypeError`` unless ``batch`` is a tensor, a tuple/list or a mapping."""
    if not isinstance(batch, (Tensor, tuple, list, Mapping)):
        raise TypeError(
            f"batch must be a Tensor, a tuple/list of positional inputs or a dict of keyword "
            f"inputs, got {type(batch).__name__}"
        )


def call_model(model: nn.Module, batch: Any) -> Any:
    """``model(batch)``, ``model(*batch)`` or ``model(**batch)``."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def first_tensor(value: Any) -> Tensor | None:
    """The first tensor in a (possibly nested) output: a tensor, tuple/list or mapping."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    return None
