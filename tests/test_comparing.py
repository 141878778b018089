"""Comparing runs: the HTML report, dvc exp/metrics/plots, `make ui` (checked in headless
Chromium; screenshots kept in $REPROLAB_SCREENSHOTS when set) and `make dashboard`, on the
shared TINY pipeline run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import REPO, free_port, run, server

pytestmark = pytest.mark.slow

MODELS = ("mlp", "lenet")


def test_html_report_has_leaderboard_and_every_figure(tiny_pipeline: dict) -> None:
    repo = tiny_pipeline["repo"]
    page = (repo / "reports/index.html").read_text()
    for column in ("val accuracy", "test accuracy", "lr", "params", "parameters"):
        assert f"<th>{column}</th>" in page
    # Wall-clock training time: never in a tracked output; from MLflow into an untracked file.
    assert "<th>training time</th>" not in page
    times = (repo / "reports/train_times.tsv").read_text().splitlines()
    for model in MODELS:
        assert re.fullmatch(rf"{model}\t\d+\.\d+", next(t for t in times if t.startswith(model)))
    images = re.findall(r'<img src="([^"]+)"', page)
    kinds = ("curves", "confusion", "history", "importance")
    assert {f"figures/{k}-{m}.png" for k in kinds for m in MODELS} <= set(images)
    for src in images:
        assert (repo / "reports" / src).read_bytes().startswith(b"\x89PNG")
    assert all(f"figures/{kind}-mlp.png" in images for kind in ("curves", "confusion"))
    assert all(f"figures/{kind}-mlp.png" in images for kind in ("history", "importance"))
    summary = (repo / "reports/summary.md").read_text()
    assert summary.count("](figures/") == len(images)
    # Beside it, untracked: the commit, HEAD's metrics (none committed here) and MLflow runs.
    context = (repo / "reports/context.md").read_text()
    run_link = (
        r"\[reprolab-digits / [0-9a-f]{8}\]\(http://127\.0\.0\.1:5000/#/experiments/\d+/runs/"
    )
    for model in MODELS:
        assert re.search(rf"\| {model} \| test_acc \| [0-9.]+ \| - \| new \| {run_link}", context)
    run(["git", "check-ignore", "-q", "reports/context.md"], repo)


def test_dvc_exp_show_metrics_and_plots_give_model_columns_and_curves(
    tiny_pipeline: dict,
) -> None:
    repo = tiny_pipeline["repo"]
    table = run(["dvc", "exp", "show", "--no-pager", "--csv"], repo).stdout
    header = table.splitlines()[0].split(",")
    for model in MODELS:  # the headline metrics (reports/metrics.json), the params
        assert f"{model}.test_acc" in header
        assert f"classifiers.{model}.batch_size" in header
    assert not [h for h in header if h.startswith("metrics/")]  # details: --targets metrics
    detail = run(["dvc", "metrics", "show", "--json", "metrics"], repo).stdout
    assert "metrics/mlp/train.json" in detail
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    assert metrics, "dvc metrics show found nothing"
    assert "Path" in run(["dvc", "metrics", "diff", "--all"], repo).stdout
    plots = json.loads(run(["dvc", "plots", "diff", "--json"], repo).stdout)
    shown = set(plots.get("data", plots))
    for model in MODELS:
        assert {f"plots/{d}/{model}.{e}" for d, e in (("curves", "tsv"), ("trials", "tsv"))} <= (
            shown
        )
        assert f"plots/confusion/{model}.csv" in shown


@pytest.mark.parametrize("command", ["show", "diff"])
def test_dvc_plots_render_offline(tiny_pipeline: dict, tmp_path: Path, command: str) -> None:
    """`dvc plots show` / `diff` write a page whose charts Vega draws with no network: the
    page template (.dvc/config plots.html_template) inlines Vega, Vega-Lite and vega-embed."""
    repo = tiny_pipeline["repo"]
    template = REPO / ".dvc/plots/page.html"
    assert template.stat().st_size < 2_000_000
    notices = template.read_text().split("-->", 1)[0]
    for name in ("vega 5.", "vega-lite 5.", "vega-embed 6."):
        assert name in notices
    assert notices.count("Redistribution and use in source and binary forms") == 3
    out = tmp_path / "plots"
    run(["dvc", "plots", command, "-o", str(out)], repo)
    page = (out / "index.html").read_text()
    assert "<script src=" not in page  # nothing fetched, from a CDN or elsewhere
    charts = len(re.findall(r"vegaEmbed\(.#plots_", page))
    assert charts >= 10  # every plot of the tiny pipeline but the GAN's sample image (<img>)
    if shutil.which("chromium") is None:  # the page was checked; drawing it needs a browser
        pytest.skip("chromium not installed (.ci/run installs it): the charts were not drawn")
    dom = _chromium((out / "index.html").as_uri(), tmp_path / "profile", offline=True)
    assert dom.count("<canvas") == charts, _text(dom)[:2000]


def _title(content: dict) -> str:
    """The chart title the page shows: the templates' expression (the model is the stem of
    the file path DVC fills in), evaluated as Vega does."""
    expr = content["title"]["text"]["expr"]
    found = re.fullmatch(r"split\(peek\(split\('([^']+)', '/'\)\), '\.'\)\[0\] \+ '([^']+)'", expr)
    assert found, expr
    path, quantity = found.groups()
    assert content["title"]["subtitle"] == path
    return path.rsplit("/", 1)[-1].split(".")[0] + quantity


def test_plots_name_model_and_quantity_and_mark_what_matters(tiny_pipeline: dict) -> None:
    """Each chart is titled by model and quantity (not by its file path), its axes carry
    units; trials are whole numbers with pruned ones marked; predictions have y = x."""
    plots = json.loads(run(["dvc", "plots", "show", "--json"], tiny_pipeline["repo"]).stdout)
    charts = {p: shown[0]["content"] for p, shown in plots["data"].items() if "content" in shown[0]}
    assert len(charts) >= 10  # every chart but the GAN's sample image
    assert _title(charts["plots/curves/mlp.tsv"]) == "mlp: training and validation loss per epoch"
    assert _title(charts["plots/confusion/lenet.csv"]).startswith("lenet: confusion matrix")
    assert _title(charts["plots/fid/dcgan.tsv"]).startswith("dcgan: validation Fréchet")
    # Each chart's axes are titled as dvc.yaml labels its folder, each y axis with its unit.
    declared = {}
    for entry in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]:
        if isinstance(entry, dict):
            (folder, spec), *_ = entry.items()
            declared[folder] = (spec["x_label"], spec["y_label"])
    units = ("nats", "units", "class", "Fréchet distance")
    assert all(any(u in y for u in units) for _, y in declared.values()), declared
    for path, content in charts.items():
        model = path.rsplit("/", 1)[-1].split(".")[0]
        assert _title(content).startswith(f"{model}: "), path
        labels = re.findall(r'"title": "([^"<]+)"', json.dumps(content, ensure_ascii=False))
        x_label, y_label = declared[path.rsplit("/", 1)[0]]
        assert x_label in labels and y_label in labels, (path, labels)
    trials = charts["plots/trials/mlp.tsv"]
    assert trials["encoding"]["x"]["axis"] == {"tickMinStep": 1, "format": "d"}
    shape = trials["layer"][1]["encoding"]["shape"]
    assert shape["field"] == "state" and "PRUNED" in shape["scale"]["domain"]
    assert "+: pruned" in _title(trials)
    diagonal = charts["plots/predictions/tabular_mlp.csv"]["layer"][1]
    assert diagonal["encoding"]["x"]["field"] == diagonal["encoding"]["y"]["field"] == "v"
    assert "y = x" in _title(charts["plots/predictions/tabular_mlp.csv"])


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_exps_fits_200_columns_and_exps_changed_has_no_md5_columns(
    tiny_pipeline: dict,
) -> None:
    """`dvc exp show` has a column per param and dependency (~150); the README leads with
    `make exps` (the headline metrics) and `make exps-changed` (what differs, no md5s)."""
    repo = tiny_pipeline["repo"]
    venv = Path(sys.executable).parent.parent
    make = ["make", "-s", "--no-print-directory", "-o", str(venv / ".reprolab-installed")]
    for target in ("exps", "exps-changed"):
        shown = run([*make, target, f"VENV={venv}"], repo, COLUMNS="200", PAGER="cat").stdout
        lines = shown.splitlines()
        assert max(map(len, lines)) <= 200, shown
        header = next(line for line in lines if "Experiment" in line).split()
        for column in ("mlp.test_acc", "lenet.test_acc", "tabular_mlp.test_rmsle"):
            assert column in header, shown
        assert not [c for c in header if "/" in c or c in ("models", "requirements.lock")]
        assert not re.search(r"\b[0-9a-f]{32}\b", shown), shown  # no dependency md5
    readme = (REPO / "README.md").read_text()
    comparing = readme[readme.index("## Comparing") :]
    assert comparing.index("make exps") < comparing.index("dvc exp show")


def _make(target: str, port: int) -> list[str]:
    """`make <target>` with this environment, without reinstalling it (-o: the install stamp
    counts as up to date)."""
    venv = Path(sys.executable).parent.parent
    stamp = venv / ".reprolab-installed"
    var = "UI_PORT" if target == "ui" else "DASHBOARD_PORT"
    return ["make", "-o", str(stamp), target, f"VENV={venv}", f"{var}={port}"]


def _chromium(
    url: str, profile: Path, screenshot: Path | None = None, offline: bool = False
) -> str:
    # offline: every host name fails to resolve and any proxy lookup goes nowhere.
    network = ["--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9"]
    cmd = [
        shutil.which("chromium") or "chromium",
        *(network if offline else []),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1600,1000",
        "--virtual-time-budget=20000",
    ]
    cmd += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    result = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _text(dom: str) -> str:
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", text).split())


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (.ci/run)")
@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_ui_lists_the_runs_with_their_metrics(tiny_pipeline: dict, tmp_path: Path) -> None:
    import mlflow

    repo = tiny_pipeline["repo"]
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("reprolab-digits").experiment_id
    parents = mlflow.search_runs(
        [experiment], "tags.`reprolab.role` = 'model'", output_format="list"
    )
    # The classifiers (the digits experiment holds the dcgan's run too, without accuracy).
    parents = [r for r in parents if r.data.tags["reprolab.model"] in MODELS]
    ids = json.dumps([r.info.run_id for r in parents])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with server(_make("ui", port), repo, f"{url}/health", timeout=180):
        runs_page = f"{url}/#/experiments/{experiment}/runs"
        # `make ui` prints where this project's runs are (MLflow 3 opens on GenAI traces),
        # and the experiment is tagged so that its own page opens on the runs.
        printed = (repo.parent / f"server-make-{os.getpid()}.log").read_text()
        assert f"reprolab-digits: {runs_page}" in printed, printed
        kind = mlflow.get_experiment(experiment).tags.get("mlflow.experimentKind")
        assert kind == "custom_model_development"
        runs_text = _text(_chromium(runs_page, tmp_path / "p1"))
        compare = (
            f"{url}/#/compare-runs?runs={urllib.parse.quote(ids)}"
            f"&experiments={urllib.parse.quote(json.dumps([experiment]))}"
        )
        compare_text = _text(_chromium(compare, tmp_path / "p2"))
        # The train run of a model (nested under its parent) shows the version it registered.
        train = mlflow.search_runs(
            [experiment], f"tags.`reprolab.stage` = 'train@{MODELS[0]}'", output_format="list"
        )[0]
        train_page = f"{url}/#/experiments/{experiment}/runs/{train.info.run_id}"
        train_text = _text(_chromium(train_page, tmp_path / "p5"))
        # Screenshots to look at, where REPROLAB_SCREENSHOTS says (never in the checkout);
        # two more browser runs, so only when asked for.
        if os.environ.get("REPROLAB_SCREENSHOTS"):
            screenshots = Path(os.environ["REPROLAB_SCREENSHOTS"])
            screenshots.mkdir(parents=True, exist_ok=True)
            _chromium(runs_page, tmp_path / "p3", screenshot=screenshots / "mlflow-runs.png")
            _chromium(compare, tmp_path / "p4", screenshot=screenshots / "mlflow-compare.png")
            for shot in ("mlflow-runs.png", "mlflow-compare.png"):
                assert (screenshots / shot).stat().st_size > 10_000
            print(f"screenshots: {screenshots}/mlflow-runs.png, mlflow-compare.png")
    assert "reprolab-digits" in runs_text
    for model in MODELS:  # each model's parent run, named <model>@<commit>
        assert re.search(rf"\b{model}\b", runs_text), runs_text[:2000]
    assert f"train@{MODELS[0]} #1" in train_text and f"digits-{MODELS[0]} v1" in train_text
    assert "lr" in train_text and "weight_decay" in train_text  # the params it trained with
    for metric in ("val_accuracy", "test_accuracy", "train_seconds", "best_val_loss"):
        assert metric in compare_text, compare_text[:3000]
    for parent in parents:
        value = parent.data.metrics["test_accuracy"]
        assert f"{value:.3f}".rstrip("0") in compare_text


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_dashboard_serves_the_studies(tiny_pipeline: dict) -> None:
    repo = tiny_pipeline["repo"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    importances = {}
    with server(_make("dashboard", port), repo, f"{url}/api/studies", timeout=120):
        with urllib.request.urlopen(f"{url}/api/studies", timeout=30) as response:
            studies = json.loads(response.read())["study_summaries"]
        for study in studies:  # what the dashboard's importance chart draws, per study
            page = f"{url}/api/studies/{study['study_id']}/param_importances"
            with (
                contextlib.suppress(urllib.error.HTTPError),  # 400: under two complete trials
                urllib.request.urlopen(page, timeout=60) as response,
            ):
                found = json.loads(response.read())["param_importances"][0]
                importances[study["study_name"]] = {p["name"]: p["importance"] for p in found}
    names = {s["study_name"] for s in studies}
    assert {n.split(".")[1] for n in names} >= {*MODELS, "tabular_mlp"}, names
    # The report ranks a study's params as the dashboard does (one evaluator: PED-ANOVA).
    from reprolab.core.params import load_params
    from reprolab.report.figures import param_importances, read_table

    params, compared = load_params(repo / "params.yaml"), 0
    for model in (*MODELS, "tabular_mlp"):
        name = json.loads((repo / f"models/{model}/best_params.json").read_text())["study"]
        report = param_importances(read_table(repo / f"plots/trials/{model}.tsv"), params)
        if report is not None and importances.get(name):
            assert report.keys() == importances[name].keys(), (report, importances[name])
            assert all(abs(report[k] - importances[name][k]) < 0.02 for k in report), name
            compared += 1
    assert compared, f"no study with two complete trials to compare: {importances}"
