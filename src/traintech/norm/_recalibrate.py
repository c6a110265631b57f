"""Recompute BatchNorm running statistics over a data loader (after weight averaging, etc.)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from typing import Any

import torch
from torch import nn

from traintech._checks import check_positive_int
from traintech.norm._convert import is_batchnorm


def _to_device(value: Any, device: torch.device | str | None) -> Any:
    if device is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def default_input(batch: Any) -> Any:
    """The model input of a batch: a tensor itself, the first item of a list/tuple, a dict whole.

    A dict is passed to the model as keyword arguments (``model(**batch)``).
    """
    if isinstance(batch, (list, tuple)):
        if not batch:
            raise ValueError("an empty list/tuple batch has no input; pass input_fn=")
        return batch[0]
    return batch


def _progress(iterable: Iterable[Any], total: int | None) -> Iterable[Any]:
    try:
        from tqdm.auto import tqdm
    except ImportError as err:
        raise ImportError(
            "progress=True needs tqdm, which is not installed: pip install 'traintech[demo]'"
        ) from err
    return tqdm(iterable, total=total, desc="recalibrate BatchNorm", unit="batch")


def recalibrate_batchnorm(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    max_batches: int | None = None,
    input_fn: Callable[[Any], Any] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> nn.Module:
    r"""Recompute the running statistics of every BatchNorm in ``model`` from ``loader``.

    The statistics are reset and re-estimated as the cumulative average over the pass (like
    ``torch.optim.swa_utils.update_bn``): after :math:`B` batches

    .. math::
        \hat\mu = \frac{1}{B}\sum_{b=1}^{B} \mu_b, \qquad
        \hat\sigma^2 = \frac{1}{B}\sum_{b=1}^{B} \frac{n_b}{n_b - 1}\sigma_b^2

    Use it after weight averaging (SWA/EMA), pruning, or a change of input distribution. Each
    BatchNorm's momentum and every module's training flag are restored afterwards; parameters
    are not touched (forwards run under ``torch.no_grad``).

    Args:
        model: the model; torch's and traintech's BatchNorm layers (Ghost, Sync) are recalibrated.
        loader: iterable of batches (tensor, list/tuple whose first item is the input, or a dict
            passed as keyword arguments).
        max_batches: stop after this many batches (None: the whole loader).
        input_fn: callable mapping a batch to the model input (a dict is passed as keywords).
        device: move the input's tensors there first (None: as they come).
        progress: show a tqdm progress bar (needs ``pip install 'traintech[demo]'``).

    Returns:
        ``model``, its BatchNorm statistics recomputed.

    Example:
        >>> net = nn.Sequential(nn.BatchNorm1d(1))
        >>> data = [torch.tensor([[1.0], [3.0]]), torch.tensor([[5.0], [7.0]])]
        >>> recalibrate_batchnorm(net, data)[0].running_mean.tolist()
        [4.0]
    """
    if max_batches is not None:
        check_positive_int(max_batches, "max_batches")
    if input_fn is not None and not callable(input_fn):
        raise TypeError(f"input_fn must be callable, got {type(input_fn).__name__}")
    layers: list[Any] = [
        m for m in model.modules() if is_batchnorm(m) and m.running_mean is not None
    ]
    if not layers:
        return model
    batches: Iterable[Any] = loader if max_batches is None else islice(loader, max_batches)
    if progress:
        total = max_batches
        if total is None and hasattr(loader, "__len__"):
            total = len(loader)  # type: ignore[arg-type]
        batches = _progress(batches, total)
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers}
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        extract = input_fn if input_fn is not None else default_input
        with torch.no_grad():
            for batch in batches:
                inp = _to_device(extract(batch), device)
                if isinstance(inp, Mapping):
                    model(**inp)
                else:
                    model(inp)
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    return model
