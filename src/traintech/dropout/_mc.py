"""Monte Carlo dropout: ``mc_predict`` and its result ``MCResult``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from traintech._checks import check_generator
from traintech.dropout._layers import DropConnect, dropout_layers, is_ours

#: Auto batching repeats the input up to this many elements in one forward.
MAX_BATCHED_ELEMENTS = 1 << 22

TASKS = ("auto", "regression", "classification")


@dataclass
class MCResult:
    r"""What :func:`mc_predict` returns (float32 unless the model computes in float64).

    Attributes:
        mean: mean prediction over the samples (the raw outputs; class probabilities for
            ``task="classification"``).
        std: standard deviation over the samples (``correction=0``), same shape as ``mean``.
        predictive_entropy: :math:`H[\bar p]` in nats (total uncertainty), one value per
            prediction (class dimension reduced); ``None`` for ``task="regression"`` or an
            output without a class dimension.
        expected_entropy: :math:`\frac1T\sum_t H[p_t]` (aleatoric); ``None`` as above.
        mutual_information: ``predictive_entropy - expected_entropy`` (epistemic, BALD),
            clamped at 0; ``None`` as above.
        samples: the ``(n_samples, *output)`` predictions if ``return_samples=True``.

    It unpacks as the triple ``mean, std, predictive_entropy``; ``spread`` and ``entropy`` are
    aliases of ``std`` and ``predictive_entropy``.
    """

    mean: Tensor
    std: Tensor
    predictive_entropy: Tensor | None = None
    expected_entropy: Tensor | None = None
    mutual_information: Tensor | None = None
    samples: Tensor | None = None

    @property
    def entropy(self) -> Tensor | None:
        """Same as :attr:`predictive_entropy` (the total uncertainty)."""
        return self.predictive_entropy

    @property
    def spread(self) -> Tensor:
        """Same as :attr:`std` (the spread of the samples)."""
        return self.std

    def __iter__(self) -> Iterator[Tensor | None]:
        """Unpack as ``mean, std, predictive_entropy = mc_predict(...)``."""
        return iter((self.mean, self.std, self.predictive_entropy))


@contextlib.contextmanager
def _mc_mode(
    model: nn.Module, layers: list[nn.Module], generator: torch.Generator | None
) -> Iterator[None]:
    # Every module's own flag (not .train()/.eval(), which recurse) and our layers' generators
    # are saved and restored, whatever happens inside.
    modes = [(m, m.training) for m in model.modules()]
    gens: list[tuple[nn.Module, torch.Generator | None]] = [
        (m, getattr(m, "generator", None)) for m in layers if is_ours(m)
    ]
    try:
        for m, _ in modes:
            m.training = False
        for m in layers:
            m.training = True
        if generator is not None:
            for m, _ in gens:
                setattr(m, "generator", generator)  # noqa: B010
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for m, gen in gens:
            setattr(m, "generator", gen)  # noqa: B010


def _seed_from(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())


def mc_predict(
    model: nn.Module,
    x: Tensor,
    n_samples: int = 30,
    generator: torch.Generator | None = None,
    *,
    task: str = "auto",
    class_dim: int = -1,
    samples_per_forward: int | None = None,
    return_samples: bool = False,
) -> MCResult:
    r"""Monte Carlo dropout (Gal & Ghahramani 2016): average ``n_samples`` stochastic passes.

    Only the dropout layers (traintech's, ``torch.nn``'s ``Dropout*``/``AlphaDropout``/
    ``FeatureAlphaDropout``, timm/torchvision ``DropPath``/``DropBlock``/``StochasticDepth``)
    run in training mode; BatchNorm and every other module run in eval, so running
    statistics are untouched. Every module's mode is restored afterwards, even on error.
    With :math:`p_t` the prediction of pass :math:`t` (softmax over ``class_dim`` for
    ``task="classification"``):

    .. math::
        \bar p = \frac1T\sum_t p_t, \quad
        H[\bar p] = -\sum_c \bar p_c \log \bar p_c, \quad
        \mathrm{MI} = H[\bar p] - \frac1T \sum_t H[p_t] \;\ge 0

    ``task="auto"`` (the default) keeps ``mean``/``std`` on the model's raw outputs, as
    ``"regression"`` does, and also reports the entropies: the outputs are read as class
    probabilities along ``class_dim`` when every sample is non-negative and sums to 1 there
    (a model ending in softmax), and as logits otherwise. They are ``None`` only when the
    output has no class dimension (fewer than 2 dims, or size 1 along ``class_dim``); for a
    regression model they are meaningless: ignore them or pass ``task="regression"``.
    ``task="classification"`` always applies softmax and returns probability statistics.

    ``H`` is the total (predictive) uncertainty; the mutual information is its epistemic part
    (disagreement between dropout masks, large off the training data); the rest is
    aleatoric. Paper: https://arxiv.org/abs/1506.02142.

    Batching: ``samples_per_forward`` copies of ``x`` are stacked along dim 0 in one
    forward. That is exact when the model treats samples independently in eval mode (true
    with BatchNorm in eval; element-, channel- and sample-wise dropout draw per copy).
    ``None`` picks as many as keep the stacked input under 2**22 elements, and 1 when the
    model has a :class:`DropConnect` (one weight mask per forward would be shared by the
    copies). Samples run under ``torch.no_grad()``.

    Reproducibility: with ``generator``, traintech's layers draw from it (their own
    generators are restored afterwards) and torch's layers draw from the global RNG forked
    with ``torch.random.fork_rng`` and seeded from ``generator``: the same seed gives the
    same result and the global RNG is left as it was.

    Args:
        model: the network (its dropout layers give the randomness).
        x: input batch, batch dimension first.
        n_samples: number of stochastic passes, ``>= 1``.
        generator: source of randomness (default: torch's global generator).
        task: ``"auto"`` (raw-output mean/std plus entropies whenever the output has a
            class dimension), ``"regression"`` (raw-output mean/std only) or
            ``"classification"`` (outputs are logits; probability mean/std, entropies).
        class_dim: class dimension of the model's output (classification).
        samples_per_forward: copies of ``x`` per forward (``None``: automatic).
        return_samples: also return every sample.

    Returns:
        An :class:`MCResult`.

    Raises:
        ValueError: if the model has no dropout layer or an argument is out of range.
        TypeError: if ``model``/``x`` have the wrong type or the model returns no tensor.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
        >>> res = mc_predict(model, torch.ones(2, 4), 8, torch.Generator().manual_seed(0),
        ...                  task="classification")
        >>> res.mean.shape, bool((res.mutual_information >= 0).all()), model.training
        (torch.Size([2, 3]), True, True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    check_generator(generator)
    layers = [m for _, m in dropout_layers(model)]
    if not layers:
        raise ValueError("model has no dropout layers: every Monte Carlo sample would be equal")
    if samples_per_forward is None:
        if any(isinstance(m, DropConnect) for m in layers) or x.dim() == 0:
            samples_per_forward = 1
        else:
            samples_per_forward = max(1, min(n_samples, MAX_BATCHED_ELEMENTS // max(1, x.numel())))
    elif (
        isinstance(samples_per_forward, bool)
        or not isinstance(samples_per_forward, int)
        or samples_per_forward < 1
    ):
        raise ValueError(f"samples_per_forward must be an int >= 1, got {samples_per_forward!r}")

    devices = [x.device] if x.device.type == "cuda" else []
    fork: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if generator is not None:
        fork = torch.random.fork_rng(devices=devices)
    outputs: list[Tensor] = []
    with _mc_mode(model, layers, generator), torch.no_grad(), fork:
        if generator is not None:
            torch.manual_seed(_seed_from(generator))
        done = 0
        while done < n_samples:
            k = min(samples_per_forward, n_samples - done)
            xb = x if k == 1 else x.repeat(k, *([1] * (x.dim() - 1)))
            out = model(xb)
            if not isinstance(out, Tensor):
                raise TypeError(f"model must return a tensor, got {type(out).__name__}")
            if k > 1 and out.shape[0] != k * x.shape[0]:
                raise ValueError(
                    f"model maps a batch of {k * x.shape[0]} to an output of shape "
                    f"{tuple(out.shape)}: stacking samples needs the batch first; pass "
                    "samples_per_forward=1"
                )
            outputs.append(out.reshape(k, -1, *out.shape[1:]) if k > 1 else out.unsqueeze(0))
            done += k
    samples = torch.cat(outputs)
    out_dtype = samples.dtype
    if samples.dtype != torch.float64:
        samples = samples.float()
    dim = class_dim if class_dim < 0 else class_dim + 1
    if task == "classification":
        probs = torch.softmax(samples, dim=dim)
        return _with_entropies(
            probs.mean(0),
            probs.std(0, correction=0),
            probs,
            dim,
            class_dim,
            probs if return_samples else None,
        )
    raw = MCResult(
        mean=samples.mean(0),
        std=samples.std(0, correction=0),
        samples=samples if return_samples else None,
    )
    out_dims = samples.dim() - 1
    if task == "regression" or out_dims < 2 or not -out_dims <= class_dim < out_dims:
        return raw
    if samples.shape[dim] < 2:
        return raw
    return _with_entropies(
        raw.mean, raw.std, _as_probs(samples, dim, out_dtype), dim, class_dim, raw.samples
    )


def _as_probs(samples: Tensor, dim: int, out_dtype: torch.dtype) -> Tensor:
    # Outputs already probabilities (non-negative, summing to 1 along dim up to the rounding of
    # the model's output dtype) are used as they are; anything else is read as logits.
    eps = torch.finfo(out_dtype).eps if out_dtype.is_floating_point else 0.0
    tol = max(4 * eps, 1e-5 if out_dtype != torch.float64 else 1e-12)
    if bool((samples >= 0).all()) and bool(((samples.sum(dim) - 1).abs() <= tol).all()):
        return samples
    return torch.softmax(samples, dim=dim)


def _with_entropies(
    mean: Tensor, std: Tensor, probs: Tensor, dim: int, class_dim: int, samples: Tensor | None
) -> MCResult:
    p_bar = probs.mean(0)
    entropy = -torch.special.xlogy(p_bar, p_bar).sum(class_dim)
    expected = -torch.special.xlogy(probs, probs).sum(dim).mean(0)
    return MCResult(
        mean=mean,
        std=std,
        predictive_entropy=entropy,
        expected_entropy=expected,
        mutual_information=(entropy - expected).clamp_min(0.0),
        samples=samples,
    )
