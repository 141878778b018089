"""reports/context.md, untracked like reports/train_times.tsv: what a tracked report may not
hold (its bytes would change with the commit or the run, and reruns must be byte-equal): the
git commit it was made at, each network's headline test metric beside the one HEAD commits
(reports/metrics.json at HEAD), and the MLflow experiment and parent run of each network,
linked for `make ui` (its default address)."""

from __future__ import annotations

import json
import subprocess

from reprolab.core import paths
from reprolab.core.schema import Params
from reprolab.tracking.lineage import code_diff
from reprolab.tracking.runs import experiment_name, parent_run
from reprolab.tracking.tags import git_sha

UI = "http://127.0.0.1:5000"  # `make ui`'s default (UI_PORT)


def committed_metrics() -> dict:
    """reports/metrics.json as HEAD commits it; {} outside git or before the first commit."""
    try:
        shown = subprocess.run(
            ["git", "show", "HEAD:reports/metrics.json"], capture_output=True, text=True, timeout=30
        )
        return json.loads(shown.stdout) if shown.returncode == 0 else {}
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}


def _change(now: float | None, then: float | None) -> str:
    if now is None or then is None:
        return "new" if then is None else "-"
    return "same" if now == then else f"{now - then:+.6g}"


def render_context(params: Params, metrics: dict, committed: dict, sha: str, runs: dict) -> str:
    """The page: ``metrics`` and ``committed`` as reports/metrics.json holds them, ``runs``
    each model's (experiment name, experiment id, run id) or None (not in this store)."""
    lines = [
        "# This result in context",
        "",
        f"Made at git commit `{sha}`" + (" with uncommitted changes" if code_diff() else "") + ".",
        "The tracked report (summary.md) holds no commit, run id or date: reruns are byte-equal.",
        "",
        "| model | metric | this result | HEAD's | change | MLflow run |",
        "|---|---|---|---|---|---|",
    ]
    for model, values in metrics.items():
        for metric, value in values.items():
            then = committed.get(model, {}).get(metric)
            found = runs.get(model)
            link = (
                "-"
                if found is None
                else (
                    f"[{found[0]} / {found[2][:8]}]({UI}/#/experiments/{found[1]}/runs/{found[2]})"
                )
            )
            shown_then = "-" if then is None else f"{then:g}"
            row = [model, metric, f"{value:g}", shown_then, _change(value, then), link]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def model_runs(params: Params) -> dict:
    """Each model's (experiment name, experiment id, parent run id) in this store, or None
    (its study from model.json, as the report's training times)."""
    runs = {}
    for model in params.all_models():
        spec = json.loads((paths.model_dir(model) / paths.SPEC_FILE).read_text())
        dataset = params.dataset_of(model)
        run = parent_run(dataset, model, spec.get("study", ""))
        found = None if run is None else (run.info.experiment_id, run.info.run_id)
        runs[model] = None if found is None else (experiment_name(dataset), *found)
    return runs


def context_markdown(params: Params, metrics: dict) -> str:
    return render_context(params, metrics, committed_metrics(), git_sha(), model_runs(params))
