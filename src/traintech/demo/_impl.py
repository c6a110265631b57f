"""Which traintech implementation each experiment runs, read from the experiment's own imports.

Every technique the demo tests comes from traintech itself (no ``torch.nn`` stand-ins). This
module finds, in each experiment module's source, the ``from traintech.<family> import ...``
statements (the demo's own helpers excluded) and resolves each imported name to the module that
defines it, so the report names exactly the code that was measured.
"""

from __future__ import annotations

import ast
import importlib
import inspect

#: The experiment name and the module that holds it.
EXPERIMENT_MODULES = {
    "init": "traintech.demo._init_exp",
    "clip": "traintech.demo._clip_exp",
    "transformer": "traintech.demo._transformer_exp",
    "norm": "traintech.demo._norm_exp",
    "dropout": "traintech.demo._dropout_exp",
}


def implementation_sources(experiment: str) -> dict[str, str]:
    """Return ``{public name: defining module}`` for the traintech names ``experiment`` imports.

    For example ``{"traintech.clip.AGC": "traintech.clip._agc", ...}``.

    Raises:
        ValueError: if ``experiment`` is not one of :data:`EXPERIMENT_MODULES`.
    """
    if experiment not in EXPERIMENT_MODULES:
        raise ValueError(
            f"experiment must be one of {tuple(EXPERIMENT_MODULES)}, got {experiment!r}"
        )
    module = importlib.import_module(EXPERIMENT_MODULES[experiment])
    tree = ast.parse(inspect.getsource(module))
    found: dict[str, str] = {}
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom) or node.module is None:
            continue
        if not node.module.startswith("traintech.") or node.module.startswith("traintech.demo"):
            continue
        package = importlib.import_module(node.module)
        for alias in node.names:
            obj = getattr(package, alias.name)
            defined_in = getattr(obj, "__module__", None) or node.module
            found[f"{node.module}.{alias.name}"] = defined_in
    return dict(sorted(found.items()))
