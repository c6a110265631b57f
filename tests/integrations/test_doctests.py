"""The integration modules' docstring examples print what they claim."""

import doctest
import importlib

import pytest

MODULES = [
    "traintech.clip._unwrap",
    "traintech.clip._guarded_optimizer",
    "traintech.monitor._sink",
    "traintech.integrations._core",
    "traintech.integrations._sinks",
    "traintech.integrations._timm",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    failures, tried = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried > 0 and failures == 0
