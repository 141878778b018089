"""The report: every model ranked by its validation metric, test metrics beside it, and
figures, as ``reports/summary.md`` and ``reports/index.html`` (+ ``reports/figures/*.png``).

summary.md and the figures are drawn from DVC-tracked files only, so they are byte-identical
across reruns. index.html adds one column that cannot be: the wall-clock training time,
read from the MLflow store (the metric ``train_seconds`` of each model's run).
"""

from __future__ import annotations

import html
import json

from reprolab import paths
from reprolab.config import Params
from reprolab.figures import draw_figures
from reprolab.io import atomic_dir, write_text
from reprolab.tracking import CHAMPION, logged_metrics, registered_name

FIGURES_DIR = "figures"
TEST_KEYS = ("accuracy", "macro_f1", "loss")


def model_params(params: Params, name: str) -> str:
    """The model's settings from params.yaml, as ``key=value`` pairs."""
    spec = params.models[name]
    pairs = {"optimizer": spec.optimizer, "batch_size": spec.batch_size, **spec.options}
    return ", ".join(f"{k}={v}" for k, v in pairs.items())


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
                "test": {k: test[k] for k in TEST_KEYS},
                "train": train["train"],
                "params": model_params(params, name),
            }
        )
    metric = params.report.metric
    # Rank on validation only: choosing by test would leak the test split into selection.
    rows.sort(key=lambda r: (-r["val"][metric], r["val"]["loss"], r["model"]))
    return rows


def _cells(params: Params, rank: int, r: dict) -> list[str]:
    metric = params.report.metric
    t, val, test = r["train"], r["val"], r["test"]
    return [
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
        r["params"],
        f"{t['best_epoch']}/{t['epochs_run']}",
        f"{t['n_parameters']:,}",
    ]


def _header(params: Params) -> list[str]:
    metric = params.report.metric
    return [
        "rank",
        "model",
        "arch",
        f"val {metric}",
        "val loss",
        "test accuracy",
        "test macro-F1",
        "test loss",
        "lr",
        "weight decay",
        "params",
        "best epoch / epochs",
        "parameters",
    ]


def _intro(params: Params, rows: list[dict]) -> tuple[str, str]:
    champion = f"models:/{registered_name(params.dataset, rows[0]['model'])}@{CHAMPION}"
    ranked = (
        f"Ranked by validation {params.report.metric}; test metrics come from the single final "
        "evaluation. Training time is wall-clock: summary.md (byte-identical across reruns) "
        "leaves it out; index.html shows it from MLflow (metric `train_seconds`)."
    )
    return ranked, champion


def render_markdown(params: Params, rows: list[dict], figures: dict) -> str:
    ranked, champion = _intro(params, rows)
    header = _header(params)
    lines = [
        f"# Leaderboard: {params.dataset}",
        "",
        ranked,
        "",
        f"Champion (alias `{CHAMPION}` in the MLflow Model Registry): `{champion}`",
        "",
        "| " + " | ".join(header) + " |",
        "|"
        + "|".join("---:" if h not in ("model", "arch", "params") else "---" for h in header)
        + "|",
    ]
    lines += ["| " + " | ".join(_cells(params, i, r)) + " |" for i, r in enumerate(rows, 1)]
    for r in rows:
        lines += ["", f"## {r['model']}", ""]
        lines += [f"![{title}]({FIGURES_DIR}/{name})" for title, name in figures[r["model"]]]
    return "\n".join(lines) + "\n"


def _duration(seconds: float | None) -> str:
    return "not in MLflow" if seconds is None else f"{seconds:.1f} s"


def render_html(
    params: Params, rows: list[dict], figures: dict, train_seconds: dict[str, float | None]
) -> str:
    ranked, champion = _intro(params, rows)
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in [*_header(params), "training time"])
    body = "\n".join(
        "<tr>"
        + "".join(
            f"<td>{e(c)}</td>"
            for c in [*_cells(params, i, r), _duration(train_seconds[r["model"]])]
        )
        + "</tr>"
        for i, r in enumerate(rows, 1)
    )
    sections = []
    for r in rows:
        images = "\n".join(
            f'<figure><img src="{FIGURES_DIR}/{e(name)}" alt="{e(title)}">'
            f"<figcaption>{e(title)}</figcaption></figure>"
            for title, name in figures[r["model"]]
        )
        sections.append(f'<h2 id="{e(r["model"])}">{e(r["model"])}</h2>\n{images}')
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "figure{display:inline-block;margin:0 1em 1em 0}img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>reprolab: {e(params.dataset)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
        f"<h1>Leaderboard: {e(params.dataset)}</h1>\n<p>{e(ranked)}</p>\n"
        f"<p>Champion (alias <code>{CHAMPION}</code>): <code>{e(champion)}</code></p>\n"
        f'<table id="leaderboard">\n<tr>{head}</tr>\n{body}\n</table>\n'
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )


def write_report(params: Params) -> list[dict]:
    rows = leaderboard_rows(params)
    models = [r["model"] for r in rows]
    specs = {m: json.loads((paths.model_dir(m) / "model.json").read_text()) for m in models}
    inputs = {
        "curves": paths.PLOTS / "curves",
        "trials": paths.PLOTS / "trials",
        "test": {m: json.loads((paths.METRICS / m / "test.json").read_text()) for m in models},
        "classes": specs[models[0]].get("classes"),
    }
    with atomic_dir(paths.REPORTS / FIGURES_DIR) as folder:
        figures = draw_figures(params, models, inputs, folder)
    write_text(paths.REPORTS / "summary.md", render_markdown(params, rows, figures))
    train_seconds = {
        m: logged_metrics(params.dataset, m, specs[m].get("study", "")).get("train_seconds")
        for m in models
    }
    write_text(paths.REPORTS / "index.html", render_html(params, rows, figures, train_seconds))
    return rows


def champion_weights_md5(model: str) -> str:
    """The md5 of the model.pt DVC tracks for ``model`` (recorded in its model.json)."""
    return json.loads((paths.model_dir(model) / "model.json").read_text())["weights_md5"]
