"""The docstring examples of traintech.init print what they claim."""

import doctest
import importlib

import pytest

MODULES = [
    "_fans_and_gain",
    "_fills",
    "_lsuv",
    "_model",
    "_orthogonal",
    "_profile",
    "_trunc_normal",
    "_variance_scaling",
    "_xavier_kaiming",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"traintech.init.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
