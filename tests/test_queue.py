"""Queued experiments run in parallel (`dvc queue start -j 2`) in DVC's temp dirs, sharing
the workspace's MLflow and Optuna stores: both land in `dvc exp show` and in MLflow."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
from conftest import clean_env, copy_repo, run, run_in_terminal, set_params, stages_run

pytestmark = pytest.mark.slow

BATCH_SIZES = (32, 16)
BUDGET = {"n_trials": 2, "epochs": 1, "max_epochs": 2}


def wait_for_queue(repo: Path, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        if not any(word in status for word in ("Queued", "Running")):
            return status
        time.sleep(3)
    raise AssertionError(f"queue not done in {timeout}s:\n{status}")


def test_two_queued_experiments_run_in_parallel_into_exp_show_and_mlflow(
    tiny_pipeline: dict, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    repo = copy_repo(tiny_pipeline["repo"], tmp_path / "repo")
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    champions = {m.name: m.aliases.get("champion") for m in client.search_registered_models()}
    set_params(repo, {"classifiers": {"mlp": {"budget": BUDGET}}})  # a short tune and train
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)
    for size in BATCH_SIZES:
        run(
            [
                "dvc",
                "exp",
                "run",
                "--queue",
                "-n",
                f"bs{size}",
                "-S",
                f"classifiers.mlp.batch_size={size}",
            ],
            repo,
        )
    run(["dvc", "queue", "start", "-j", "2"], repo)
    status = wait_for_queue(repo)
    assert status.count("Success") == len(BATCH_SIZES), status
    for size in BATCH_SIZES:
        logs = run(["dvc", "queue", "logs", f"bs{size}"], repo)
        assert "database is locked" not in logs.stdout + logs.stderr
        # A one-model change reruns that model's stages and the report, nothing else: the
        # other stages are found up to date from the committed dvc.lock and the cache.
        assert set(stages_run(logs.stdout)) == {"tune@mlp", "train@mlp", "evaluate@mlp", "report"}

    table = run(["dvc", "exp", "show", "--no-pager", "--csv"], repo).stdout.splitlines()
    header = table[0].split(",")
    column = {name: header.index(name) for name in ("Experiment", "State")}
    rows = {r.split(",")[column["Experiment"]]: r.split(",") for r in table[1:]}
    for size in BATCH_SIZES:
        assert rows[f"bs{size}"][column["State"]] == "Success"
        assert rows[f"bs{size}"][header.index("mlp.test_acc")]
    # Metrics are the headline numbers only (one per network; the rest: --targets metrics).
    assert [h for h in header if h.endswith(("test_acc", "test_rmsle", "test_fid"))] == [
        h for h in header[header.index("Executor") + 1 : header.index("seed")]
    ]
    # Compared on a 200-column terminal: what changed, every number whole.
    shown = run(["dvc", "exp", "show", "--no-pager", "--only-changed"], repo, COLUMNS="200")
    lines = shown.stdout.splitlines()
    assert max(map(len, lines)) <= 200
    assert "mlp.test_acc" in lines[1] and "classifiers.mlp.batch_size" in lines[1], lines[1]
    for size in BATCH_SIZES:
        row = next(line for line in lines if f"[bs{size}]" in line)
        accuracy = float(rows[f"bs{size}"][header.index("mlp.test_acc")])
        assert f"{accuracy:.5f}".rstrip("0") in row and f" {size} " in row, row
    # `make exps`: every network's headline test metric, none folded.
    venv = Path(sys.executable).parent.parent
    make = ["make", "-o", str(venv / ".reprolab-installed"), "exps", f"VENV={venv}", "-s"]
    headline = run(make + ["--no-print-directory"], repo, COLUMNS="200", PAGER="cat").stdout
    assert "…" not in headline, headline
    for column in ("mlp.test_acc", "lenet.test_acc", "tabular_mlp.test_rmsle", "dcgan.test_fid"):
        assert column in headline, headline
    # A plain `dvc exp show` in a 200-column terminal: DVC pages its table through
    # `less -RS` (here `cat`, same rendering); the first screen is every headline metric,
    # whole, and nothing on it is folded.
    code, shown = run_in_terminal(
        ["dvc", "exp", "show"], repo, env=clean_env(DVC_PAGER="cat"), columns=200
    )
    assert code == 0, shown
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode())
    screen = [line[:200] for line in text.splitlines()]
    head = next(line for line in screen if "Experiment" in line)
    assert "…" not in "".join(screen), text
    for column in ("mlp.test_acc", "lenet.test_acc", "tabular_mlp.test_rmsle", "dcgan.test_fid"):
        assert column in head, head
    for size in BATCH_SIZES:
        row = next(line for line in screen if f"[bs{size}]" in line)
        accuracy = float(rows[f"bs{size}"][header.index("mlp.test_acc")])
        assert f"{accuracy:.5f}".rstrip("0") in row, row
    # Plots compare the two experiments, one plot per model, titled by model (its file the
    # subtitle), axes named.
    plots = json.loads(run(["dvc", "plots", "diff", "bs32", "bs16", "--json"], repo).stdout)
    curves = plots["data"]["plots/curves/mlp.tsv"][0]
    assert set(curves["revisions"]) == {"bs32", "bs16"}
    assert curves["content"]["title"]["subtitle"] == "plots/curves/mlp.tsv"
    assert "'plots/curves/mlp.tsv'" in curves["content"]["title"]["text"]["expr"]
    content = curves["content"]  # one mark per plot since .dvc/plots/curves.json
    encoding = content["layer"][0]["encoding"] if "layer" in content else content["encoding"]
    assert "loss" in json.dumps(encoding["y"]["title"])

    experiment = client.get_experiment_by_name("reprolab-digits")
    parents = client.search_runs(
        [experiment.experiment_id],
        "tags.`reprolab.role` = 'model' and tags.`reprolab.model` = 'mlp'",
    )
    by_size = {r.data.params.get("model.batch_size"): r for r in parents}
    for size in BATCH_SIZES:
        parent = by_size[str(size)]  # a new study per experiment, tuned, trained, evaluated
        assert {"best_val_loss", "val_accuracy", "test_accuracy"} <= set(parent.data.metrics)
        executions = client.search_runs(
            [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        )
        assert sorted(r.info.run_name for r in executions) == [
            "evaluate@mlp #1",
            "train@mlp #1",
            "tune@mlp #1",
        ]
        tune = next(r for r in executions if r.info.run_name == "tune@mlp #1")
        trials = client.search_runs(
            [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{tune.info.run_id}'"
        )
        assert len(trials) == BUDGET["n_trials"]
    assert len(client.search_model_versions("name = 'digits-mlp'")) == 1 + len(BATCH_SIZES)
    # The champion is the workspace's result: queued experiments never move it.
    assert {m.name: m.aliases.get("champion") for m in client.search_registered_models()} == (
        champions
    )
    assert any(champions.values())
