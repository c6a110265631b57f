"""Which traintech implementation each experiment runs, listed in the report.

Every technique the demo tests comes from traintech itself (no ``torch.nn`` stand-ins): this
table names them so the report can say exactly what was measured.
"""

from __future__ import annotations

USED: dict[str, tuple[str, ...]] = {
    "init": (
        "traintech.init.calculate_gain",
        "traintech.init.init_model",
        "traintech.init.kaiming_normal_",
        "traintech.init.lecun_normal_",
        "traintech.init.lsuv_",
        "traintech.init.orthogonal_",
        "traintech.init.xavier_normal_",
    ),
    "clip": (
        "traintech.clip.AGC",
        "traintech.clip.ZClip",
        "traintech.clip.clip_grad_norm_",
        "traintech.clip.clip_grad_value_",
    ),
    "norm": ("traintech.norm.BatchNorm1d", "traintech.norm.GroupNorm", "traintech.norm.LayerNorm"),
    "dropout": ("traintech.dropout.Dropout", "traintech.dropout.mc_predict"),
}


def implementation_sources(family: str) -> dict[str, str]:
    """Return ``{qualified name: "traintech"}`` for the names experiment ``family`` uses."""
    return dict.fromkeys(USED[family], "traintech")
