"""The demo's offline data: digits split, OOD patches, text and its stdlib fallback."""

import sys

import pytest
import torch

from traintech.demo import _data


def test_digits_split_is_fixed_and_disjoint():
    digits = _data.load_digits()
    assert len(digits.y_train) == 1300 and len(digits.y_test) == 497
    assert 0.0 <= float(digits.x_train.min()) and float(digits.x_train.max()) <= 1.0
    assert set(digits.y_test.tolist()) == set(range(10))
    z = digits.standardize(digits.x_train)
    torch.testing.assert_close(z.mean(0), torch.zeros(64), atol=1e-5, rtol=0)


def test_ood_patches_are_scaled_like_digits():
    patches = _data.load_ood_patches(50, seed=1)
    assert patches.shape == (50, 64)
    assert torch.allclose(patches.amin(1), torch.zeros(50))
    assert torch.allclose(patches.amax(1), torch.ones(50))


def test_text_is_the_cpython_manual_encoded_over_the_alphabet():
    text = _data.load_text()
    assert "pydoc_data.topics" in text.source
    assert len(text.ids) > 400_000
    assert int(text.ids.max()) < text.vocab_size == len(_data.ALPHABET)


def test_text_falls_back_to_stdlib_sources_and_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pydoc_data.topics", None)
    _data.load_text.cache_clear()
    try:
        text = _data.load_text()
    finally:
        _data.load_text.cache_clear()
    assert "standard-library" in text.source
    assert len(text.ids) >= 50_000
    assert "pydoc_data.topics is missing" in capsys.readouterr().out


def test_take_batches_sweeps_whole_epochs():
    batches = _data.take_batches(10, 3, 6, torch.Generator().manual_seed(0))
    first_epoch = torch.cat(batches[:3])
    assert sorted(first_epoch.tolist()) == sorted(set(first_epoch.tolist()))
    assert all(len(b) == 3 for b in batches)


def test_missing_optional_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'traintech\[demo\]'"):
        _data.require("matplotlib.pyplot")
