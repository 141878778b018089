"""The leaderboards rendered as Markdown (summary.md) and HTML (index.html): only values
read from DVC-tracked files, so both are byte-identical across reruns and machines."""

from __future__ import annotations

import html

from reprolab.core import paths
from reprolab.core.io import write_json, write_text, write_tsv
from reprolab.core.schema import Params
from reprolab.report.context import context_markdown
from reprolab.report.leaderboard import (
    FIGURES_DIR,
    Section,
    champion_candidates,
    headline_metrics,
    leaderboards,
    train_times,
)
from reprolab.tracking.champion import CHAMPION
from reprolab.tracking.models import registered_name


def _cells(section: Section, rank: int, r: dict) -> list[str]:
    return [
        str(rank),
        r["model"] + (f" (WARNING: {r['flag']})" if r.get("flag") else ""),
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
    metric = {"rmsle": "RMSLE", "rmse": "RMSE", "fid": "Fréchet distance"}.get(
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
        "epoch kept / run",
        "parameters",
    ]


def _title(section: Section) -> str:
    order = "higher is better" if section.higher_is_better else "lower is better"
    return f"{section.group.capitalize()} on {section.dataset} (ranked by validation, {order})"


def champion_uri(section: Section, rows: list[dict]) -> str | None:
    candidates = champion_candidates(rows)
    if not candidates:
        return None
    return f"models:/{registered_name(section.dataset, candidates[0])}@{CHAMPION}"


INTRO = (
    "Each table ranks by a validation metric; test metrics come from the single final "
    "evaluation. scikit-learn baselines are chosen on validation too. Wall-clock training "
    "times are not here (every file of the report is byte-identical across reruns and "
    "machines): they are in MLflow (metric `train_seconds`) and in reports/train_times.tsv."
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


def render_html(
    params: Params,
    boards: list[tuple[Section, list[dict]]],
    figures: dict,
) -> str:
    e = html.escape
    tables = []
    for section, rows in boards:
        head = "".join(f"<th>{e(h)}</th>" for h in _header(section))
        body = "\n".join(
            "<tr>" + "".join(f"<td>{e(c)}</td>" for c in _cells(section, i, r)) + "</tr>"
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
    """reports/summary.md, index.html, metrics.json and figures/ (DVC outputs);
    reports/train_times.tsv (wall-clock) and context.md (commit, HEAD's metrics, MLflow
    runs), both untracked. Returns the ranked rows of each section."""
    boards, figures = leaderboards(params)
    write_text(paths.REPORTS / "summary.md", render_markdown(params, boards, figures))
    write_text(paths.REPORTS / "index.html", render_html(params, boards, figures))
    headline = headline_metrics(params, boards)
    write_json(paths.REPORTS / "metrics.json", headline)
    write_tsv(paths.REPORTS / "train_times.tsv", train_times(params))
    write_text(paths.REPORTS / "context.md", context_markdown(params, headline))
    return boards
