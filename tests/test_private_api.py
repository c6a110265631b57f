"""Every private torch API goes through ``traintech/_compat.py`` (DTensor internals may stay in
``traintech/_distributed.py``), so one file shows what a torch upgrade can break.

The check reads the code, not the text: docstrings and comments may name private APIs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import traintech

PACKAGE = Path(traintech.__file__).resolve().parent
ALLOWED = {PACKAGE / "_compat.py", PACKAGE / "_distributed.py"}

#: Attribute names that belong to torch's private contracts even though some lack an underscore
#: (the fused optimizers read ``grad_scale``/``found_inf`` set by ``GradScaler``).
PRIVATE_CONTRACT = {
    "_step_supports_amp_scaling",
    "_per_optimizer_states",
    "_get_scale_async",
    "grad_scale",
    "found_inf",
}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.AST) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def private_uses(source: str) -> list[tuple[int, str]]:
    """``(line, what)`` for each use of a private torch API in ``source``."""
    tree = ast.parse(source)
    torch_names = {"torch"}  # names bound to torch modules/objects in this file
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "torch":
                    torch_names.add((alias.asname or alias.name).split(".")[0])
                    if any(_private(p) for p in alias.name.split(".")):
                        found.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            module = node.module or ""
            for alias in node.names:
                torch_names.add(alias.asname or alias.name)
                if any(_private(p) for p in module.split(".")) or _private(alias.name):
                    found.append((node.lineno, f"from {module} import {alias.name}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = _dotted(node)
            if chain and chain[0] in torch_names and any(_private(p) for p in chain[1:]):
                found.append((node.lineno, ".".join(chain)))
            elif node.attr in PRIVATE_CONTRACT:
                found.append((node.lineno, f"... .{node.attr}"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in PRIVATE_CONTRACT
        ):
            found.append((node.lineno, f"{node.func.id}(..., {node.args[1].value!r})"))
    return sorted(set(found))


def test_no_private_torch_api_outside_compat() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in ALLOWED:
            continue
        for line, what in private_uses(path.read_text()):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {what}")
    assert not offenders, (
        "private torch APIs used outside traintech/_compat.py; add a wrapper at the end of "
        "_compat.py and call it instead:\n" + "\n".join(offenders)
    )


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch._foreach_mul_(xs, 2.0)",
        "import torch\nx = torch.utils._foreach_utils._group_tensors_by_device_and_dtype",
        "from torch import nn\nclass C(nn.modules.conv._ConvNd): pass",
        "from torch.utils._foreach_utils import _device_has_foreach_support",
        "from torch._utils import _flatten_dense_tensors",
        "from torch.testing import _internal",
        "import torch.testing._internal.common_utils",
        "import torch as t\nt.ops.aten._fused_sgd_",
        "flag = getattr(opt, '_step_supports_amp_scaling', False)",
        "opt.found_inf = bad",
    ],
)
def test_the_check_finds_private_uses(snippet: str) -> None:
    assert private_uses(snippet)


@pytest.mark.parametrize(
    "snippet",
    [
        '"""Uses ``torch._foreach_norm`` internally."""',
        "# torch._foreach_norm is wrapped in _compat\nx = 1",
        "import torch\ny = torch.nn.functional.rms_norm(x, (3,))\nz = torch.__version__",
        "from traintech._compat import foreach_norm\nfoo._private = 1",
    ],
)
def test_the_check_ignores_docs_and_public_apis(snippet: str) -> None:
    assert private_uses(snippet) == []
