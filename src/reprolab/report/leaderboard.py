"""The report: every model ranked by its validation metric, test metrics beside it, and
figures, as ``reports/summary.md`` and ``reports/index.html`` (+ ``reports/figures/*.png``).

summary.md and the figures are drawn from DVC-tracked files only, so they are byte-identical
across reruns. index.html adds one column that cannot be: the wall-clock training time,
read from the MLflow store (the metric ``train_seconds`` of each model's run).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass

from reprolab.core import paths
from reprolab.core.io import atomic_dir, write_text
from reprolab.core.schema import Params
from reprolab.report.figures import draw_figures
from reprolab.tracking.models import CHAMPION, registered_name
from reprolab.tracking.runs import logged_metrics

FIGURES_DIR = "figures"


@dataclass(frozen=True)
class Section:
    """One leaderboard: a model group, its dataset, and how it ranks and shows metrics."""

    group: str  # params.yaml group (classifiers, regressors)
    kind: str  # image | tabular
    dataset: str
    rank_metric: str  # a validation metric
    higher_is_better: bool
    # (header, which metrics, key) cells after the rank metric
    columns: tuple[tuple[str, str, str], ...]
    note: str = ""  # a paragraph under the title
    baselines: bool = True  # the scikit-learn rows of its kind of dataset


def sections(params: Params) -> list[Section]:
    metric = params.report.metric
    out = []
    if params.classifiers:
        out.append(
            Section(
                "classifiers",
                "image",
                params.datasets.image,
                metric,
                True,
                (
                    ("val loss", "val", "loss"),
                    ("test accuracy", "test", "accuracy"),
                    ("test macro-F1", "test", "macro_f1"),
                    ("test loss", "test", "loss"),
                ),
            )
        )
    if params.regressors:
        out.append(
            Section(
                "regressors",
                "tabular",
                params.datasets.tabular,
                "rmsle",
                False,
                (
                    ("test RMSLE", "test", "rmsle"),
                    ("test RMSE", "test", "rmse"),
                    ("test R²", "test", "r2"),
                ),
            )
        )
    if params.generators:
        out.append(
            Section(
                "generators",
                "image",
                params.datasets.image,
                "fid",
                False,
                (("test Fréchet distance", "test", "fid"),),
                note=GENERATORS_NOTE,
                baselines=False,
            )
        )
    return out


GENERATORS_NOTE = (
    "The Fréchet distance between real and generated images in the features of the "
    "generator's scorer, a classifier of this pipeline read at its last hidden layer "
    "(src/reprolab/features.py): distances compare only under one scorer and are not "
    "Inception FIDs; each split is compared with as many generated images as it holds."
)


def model_params(params: Params, name: str) -> str:
    """The model's settings from params.yaml, as ``key=value`` pairs."""
    spec = params.model(name)
    pairs = {"optimizer": spec.optimizer, "batch_size": spec.batch_size, **spec.options}
    return ", ".join(f"{k}={v}" for k, v in pairs.items())


def _read(path) -> dict:
    return json.loads(path.read_text())


def leaderboard_rows(params: Params, section: Section) -> list[dict]:
    rows = []
    for name in getattr(params, section.group):
        train = _read(paths.METRICS / name / "train.json")
        t = train["train"]
        rows.append(
            {
                "model": name,
                "arch": params.model(name).arch,
                "val": train["val"],
                "test": _read(paths.METRICS / name / "test.json"),
                "lr": f"{t['lr']:.3g}",
                "weight_decay": f"{t['weight_decay']:.3g}",
                "params": model_params(params, name),
                "epochs": f"{t['best_epoch']}/{t['epochs_run']}",
                "parameters": f"{t['n_parameters']:,}",
            }
        )
    baselines = paths.METRICS / "baselines" / section.kind
    if section.baselines and (baselines / "val.json").is_file():
        val, test = _read(baselines / "val.json"), _read(baselines / "test.json")
        for name, chosen in val.items():
            hyper = next(k for k in chosen if k not in ("val", "grid"))
            rows.append(
                {
                    "model": name,
                    "arch": "scikit-learn baseline",
                    "val": chosen["val"],
                    "test": test[name],
                    "lr": "-",
                    "weight_decay": "-",
                    "params": f"{hyper}={chosen[hyper]:g}",
                    "epochs": "-",
                    "parameters": "-",
                }
            )
    # Rank on validation only: choosing by test would leak the test split into selection.
    sign = -1 if section.higher_is_better else 1
    rows.sort(
        key=lambda r: (sign * r["val"][section.rank_metric], r["val"].get("loss", 0), r["model"])
    )
    return rows


def _cells(section: Section, rank: int, r: dict) -> list[str]:
    return [
        str(rank),
        r["model"],
        r["arch"],
        f"{r['val'][section.rank_metric]:.4f}",
        *(f"{r[which][key]:.4f}" for _, which, key in section.columns),
        r["lr"],
        r["weight_decay"],
        r["params"],
        r["epochs"],
        r["parameters"],
    ]


def _header(section: Section) -> list[str]:
    metric = {"rmsle": "RMSLE", "fid": "Fréchet distance"}.get(
        section.rank_metric, section.rank_metric
    )
    return [
        "rank",
        "model",
        "arch",
        f"val {metric}",
        *(h for h, _, _ in section.columns),
        "lr",
        "weight decay",
        "params",
        "best epoch / epochs",
        "parameters",
    ]


def _title(section: Section) -> str:
    order = "higher is better" if section.higher_is_better else "lower is better"
    return f"{section.group.capitalize()} on {section.dataset} (ranked by validation, {order})"


def champion_uri(section: Section, rows: list[dict]) -> str | None:
    best = next((r for r in rows if r["arch"] != "scikit-learn baseline"), None)
    if best is None:
        return None
    return f"models:/{registered_name(section.dataset, best['model'])}@{CHAMPION}"


INTRO = (
    "Each table ranks by a validation metric; test metrics come from the single final "
    "evaluation. scikit-learn baselines are chosen on validation too. Training time is "
    "wall-clock: summary.md (byte-identical across reruns) leaves it out; index.html shows "
    "it from MLflow (metric `train_seconds`)."
)


def render_markdown(params: Params, boards: list[tuple[Section, list[dict]]], figures: dict) -> str:
    lines = ["# reprolab leaderboard", "", INTRO]
    for section, rows in boards:
        header = _header(section)
        lines += ["", f"## {_title(section)}", ""]
        if section.note:
            lines += [section.note, ""]
        uri = champion_uri(section, rows)
        if uri:
            lines += [f"Champion (alias `{CHAMPION}` in the MLflow Model Registry): `{uri}`", ""]
        lines += [
            "| " + " | ".join(header) + " |",
            "|"
            + "|".join("---" if h in ("model", "arch", "params") else "---:" for h in header)
            + "|",
        ]
        lines += ["| " + " | ".join(_cells(section, i, r)) + " |" for i, r in enumerate(rows, 1)]
    for _section, rows in boards:
        for r in rows:
            if r["model"] in figures:
                lines += ["", f"### {r['model']}", ""]
                lines += [f"![{t}]({FIGURES_DIR}/{name})" for t, name in figures[r["model"]]]
    return "\n".join(lines) + "\n"


def _duration(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def render_html(
    params: Params,
    boards: list[tuple[Section, list[dict]]],
    figures: dict,
    train_seconds: dict[str, float | None],
) -> str:
    e = html.escape
    tables = []
    for section, rows in boards:
        head = "".join(f"<th>{e(h)}</th>" for h in [*_header(section), "training time"])
        body = "\n".join(
            "<tr>"
            + "".join(
                f"<td>{e(c)}</td>"
                for c in [*_cells(section, i, r), _duration(train_seconds.get(r["model"]))]
            )
            + "</tr>"
            for i, r in enumerate(rows, 1)
        )
        uri = champion_uri(section, rows)
        champion = (
            f"<p>Champion (alias <code>{CHAMPION}</code>): <code>{e(uri)}</code></p>\n"
            if uri
            else ""
        )
        note = f"<p>{e(section.note)}</p>\n" if section.note else ""
        tables.append(
            f"<h2>{e(_title(section))}</h2>\n{note}{champion}"
            f'<table id="leaderboard-{e(section.group)}">\n<tr>{head}</tr>\n{body}\n</table>'
        )
    parts = []
    for model, items in figures.items():
        images = "\n".join(
            f'<figure><img src="{FIGURES_DIR}/{e(name)}" alt="{e(title)}">'
            f"<figcaption>{e(title)}</figcaption></figure>"
            for title, name in items
        )
        parts.append(f'<h3 id="{e(model)}">{e(model)}</h3>\n{images}')
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "figure{display:inline-block;margin:0 1em 1em 0}img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>reprolab leaderboard</title>\n<style>{style}</style>\n</head>\n<body>\n"
        f"<h1>reprolab leaderboard</h1>\n<p>{e(INTRO)}</p>\n"
        + "\n".join(tables)
        + "\n"
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )


def write_report(params: Params) -> list[tuple[Section, list[dict]]]:
    boards = [(section, leaderboard_rows(params, section)) for section in sections(params)]
    models = list(params.all_models())
    specs = {m: _read(paths.model_dir(m) / "model.json") for m in models}
    inputs = {
        "curves": paths.PLOTS / "curves",
        "trials": paths.PLOTS / "trials",
        "predictions": paths.PLOTS / "predictions",
        "gan": paths.PLOTS / "gan",
        "samples": paths.PLOTS / "samples",
        "test": {m: _read(paths.METRICS / m / "test.json") for m in models},
        "classes": {m: specs[m].get("classes") for m in models},
    }
    with atomic_dir(paths.REPORTS / FIGURES_DIR) as folder:
        figures = draw_figures(params, models, inputs, folder)
    write_text(paths.REPORTS / "summary.md", render_markdown(params, boards, figures))
    train_seconds = {
        m: logged_metrics(params.dataset_of(m), m, specs[m].get("study", "")).get("train_seconds")
        for m in models
    }
    write_text(paths.REPORTS / "index.html", render_html(params, boards, figures, train_seconds))
    return boards


def champion_weights_md5(model: str) -> str:
    """The md5 of the model.pt DVC tracks for ``model`` (recorded in its model.json)."""
    return _read(paths.model_dir(model) / "model.json")["weights_md5"]
