"""The leaderboard: every model ranked by its validation metric, test metrics beside it."""

from __future__ import annotations

import json

from reprolab import paths
from reprolab.config import Params
from reprolab.io import write_text


def leaderboard_rows(params: Params) -> list[dict]:
    rows = []
    for name in params.models:
        train = json.loads((paths.METRICS / name / "train.json").read_text())
        test = json.loads((paths.METRICS / name / "test.json").read_text())
        rows.append(
            {
                "model": name,
                "arch": params.models[name].arch,
                "val": train["val"],
                "test": {k: test[k] for k in ("accuracy", "macro_f1", "loss")},
                "train": train["train"],
            }
        )
    metric = params.report.metric
    # Rank on validation only: choosing by test would leak the test split into selection.
    rows.sort(key=lambda r: (-r["val"][metric], r["val"]["loss"], r["model"]))
    return rows


def render_leaderboard(params: Params, rows: list[dict]) -> str:
    metric = params.report.metric
    lines = [
        f"# Leaderboard: {params.dataset}",
        "",
        f"Ranked by validation {metric}; test metrics come from the single final evaluation.",
        "",
        f"| rank | model | arch | val {metric} | val loss | test accuracy | test macro-F1 "
        "| test loss | lr | weight decay | epochs | parameters |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rank, r in enumerate(rows, 1):
        t, val, test = r["train"], r["val"], r["test"]
        cells = [
            str(rank),
            r["model"],
            r["arch"],
            f"{val[metric]:.4f}",
            f"{val['loss']:.4f}",
            f"{test['accuracy']:.4f}",
            f"{test['macro_f1']:.4f}",
            f"{test['loss']:.4f}",
            f"{t['lr']:.3g}",
            f"{t['weight_decay']:.3g}",
            f"{t['best_epoch']}/{t['epochs_run']}",
            f"{t['n_parameters']:,}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(params: Params) -> list[dict]:
    rows = leaderboard_rows(params)
    write_text(paths.REPORTS / "leaderboard.md", render_leaderboard(params, rows))
    return rows
