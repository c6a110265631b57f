"""The demo's data, all available offline: scikit-learn's digits and sample photos, CPython's docs.

Nothing is downloaded. scikit-learn ships ``load_digits`` (1,797 8x8 images of handwritten
digits) and two sample photos (``load_sample_images``) that serve as out-of-distribution inputs;
CPython ships the text of its reference manual in ``pydoc_data.topics`` (about 465K characters),
used for the character-level models. Where a distribution strips ``pydoc_data``, the source of a
few standard-library modules stands in, and the run says so.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

DEMO_EXTRA_HINT = "pip install 'traintech[demo]'"

#: Characters the char-level models see; anything else maps to the last symbol.
_ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))
OTHER_CHAR = "\x00"
ALPHABET = _ALPHABET + OTHER_CHAR


def require(module: str) -> ModuleType:
    """Import an optional dependency of the demo, or explain how to install it.

    Raises:
        ModuleNotFoundError: naming the module and the ``traintech[demo]`` extra.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"traintech demo needs the optional package {module.split('.')[0]!r}, which is not "
            f"installed; install the demo extras with: {DEMO_EXTRA_HINT}"
        ) from err


@dataclass(frozen=True)
class Digits:
    """scikit-learn's digits split once into train and test (fixed permutation, seed 0).

    Attributes:
        x_train: ``(n, 64)`` float32 pixels scaled to [0, 1].
        y_train: ``(n,)`` int64 labels.
        x_test: ``(m, 64)`` float32 pixels scaled to [0, 1].
        y_test: ``(m,)`` int64 labels.
        mean: ``(64,)`` per-pixel training mean, for standardizing.
        std: ``(64,)`` per-pixel training std (floored at 0.05).
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    mean: Tensor
    std: Tensor

    def standardize(self, x: Tensor) -> Tensor:
        """Standardize pixels with the training mean and std."""
        return (x - self.mean) / self.std


@lru_cache(maxsize=1)
def load_digits(n_test: int = 497) -> Digits:
    """Return the digits split into 1,300 training and 497 test images."""
    datasets = require("sklearn.datasets")
    bunch = datasets.load_digits()
    x = torch.as_tensor(np.asarray(bunch.data, dtype=np.float32) / 16.0)
    y = torch.as_tensor(np.asarray(bunch.target, dtype=np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test, train = order[:n_test], order[n_test:]
    x_train = x[train]
    return Digits(
        x_train=x_train,
        y_train=y[train],
        x_test=x[test],
        y_test=y[test],
        mean=x_train.mean(0),
        std=x_train.std(0).clamp_min(0.05),
    )


@lru_cache(maxsize=4)
def load_ood_patches(n: int = 500, seed: int = 0) -> Tensor:
    """Return ``n`` out-of-distribution inputs shaped like digits, from scikit-learn's photos.

    Each photo is converted to grey, averaged over 4x4 blocks, and cut into random 8x8 patches
    whose pixels are min-max scaled to [0, 1] like the digits. Returns ``(n, 64)`` float32.
    """
    datasets = require("sklearn.datasets")
    images = datasets.load_sample_images().images
    rng = np.random.default_rng(seed)
    patches = []
    for index in range(n):
        image = np.asarray(images[index % len(images)], dtype=np.float32).mean(axis=2)
        h, w = (image.shape[0] // 4) * 4, (image.shape[1] // 4) * 4
        small = image[:h, :w].reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3))
        r = int(rng.integers(0, small.shape[0] - 8))
        c = int(rng.integers(0, small.shape[1] - 8))
        patch = small[r : r + 8, c : c + 8]
        patch = (patch - patch.min()) / max(float(patch.max() - patch.min()), 1e-6)
        patches.append(patch.reshape(64))
    return torch.as_tensor(np.stack(patches).astype(np.float32))


@dataclass(frozen=True)
class Text:
    """A character-level corpus encoded over :data:`ALPHABET`.

    Attributes:
        ids: ``(n,)`` int64 character ids.
        source: where the text came from, for the report.
        vocab_size: number of symbols (``len(ALPHABET)``).
    """

    ids: Tensor
    source: str
    vocab_size: int


def _encode(text: str) -> Tensor:
    lookup = {ch: i for i, ch in enumerate(ALPHABET)}
    other = lookup[OTHER_CHAR]
    return torch.tensor([lookup.get(ch, other) for ch in text], dtype=torch.int64)


def _stdlib_sources() -> str:
    parts = []
    for name in ("argparse", "inspect", "typing", "dataclasses", "pathlib", "textwrap"):
        try:
            parts.append(inspect.getsource(importlib.import_module(name)))
        except (ImportError, OSError, TypeError):
            continue
    return "\n".join(parts)


@lru_cache(maxsize=1)
def load_text() -> Text:
    """Return CPython's reference-manual text, or the source of stdlib modules if it is absent.

    Raises:
        RuntimeError: if neither text can be read.
    """
    try:
        topics_module = importlib.import_module("pydoc_data.topics")
        topics: dict[str, str] = topics_module.topics
        text = "\n".join(topics[key] for key in sorted(topics))
        source = f"CPython reference manual (pydoc_data.topics, {len(text):,} characters)"
    except (ImportError, AttributeError):
        text = _stdlib_sources()
        source = (
            f"source code of standard-library modules ({len(text):,} characters): this Python "
            "has no pydoc_data.topics (some distributions strip it), so the numbers will differ "
            "from the reference run"
        )
        print(f"traintech demo: pydoc_data.topics is missing; using the {source}.")
    if len(text) < 50_000:
        raise RuntimeError(
            f"traintech demo needs a text of at least 50,000 characters for its character "
            f"models; found only {len(text):,} (pydoc_data.topics missing and stdlib sources "
            "unreadable)"
        )
    return Text(ids=_encode(text), source=source, vocab_size=len(ALPHABET))


def take_batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> list[Tensor]:
    """Return ``steps`` index batches that sweep shuffled epochs of ``range(n)``."""
    batches: list[Tensor] = []
    order = torch.randperm(n, generator=generator)
    pos = 0
    for _ in range(steps):
        if pos + batch_size > n:
            order = torch.randperm(n, generator=generator)
            pos = 0
        batches.append(order[pos : pos + batch_size])
        pos += batch_size
    return batches
