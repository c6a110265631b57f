"""The docstring examples print the values they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch
from torch import nn

MODULES = [
    "functional",
    "_alpha",
    "_drop_block",
    "_drop_connect",
    "_drop_path",
    "_dropout",
    "_mc",
    "_schedule",
    "_spatial",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"traintech.dropout.{name}")
    result = doctest.testmod(module, extraglobs={"torch": torch, "nn": nn})
    assert result.attempted > 0
    assert result.failed == 0
