"""The adaptive clippers' docstring examples print what they claim."""

import doctest
import importlib

import pytest

MODULES = ["_ema", "_quantile", "_zclip", "_agc"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"traintech.clip.{name}")
    failures, tried = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried > 0 and failures == 0
