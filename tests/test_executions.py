"""One MLflow run per stage execution (issue #25, point 4): a forced rerun of train@mlp gets a
run of its own beside the first, under the model's parent run, and a SIGTERM in the middle of
a stage ends that execution's run KILLED. On a copy of the real tiny pipeline."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import clean_env, copy_repo, run, set_params

pytestmark = pytest.mark.slow


def _runs(repo: Path) -> tuple:
    """The client of ``repo``'s store and the runs of the digits experiment, by name."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("reprolab-digits")
    runs = client.search_runs([experiment.experiment_id], max_results=10000)
    return client, {r.info.run_name: r for r in runs if r.data.tags.get("reprolab.model") == "mlp"}


def test_each_execution_is_its_own_run_and_a_sigterm_ends_it_killed(
    tiny_pipeline: dict, tmp_path: Path
) -> None:
    repo = copy_repo(tiny_pipeline["repo"], tmp_path / "repo")
    run(["dvc", "repro", "--force", "--single-item", "train@mlp"], repo)
    client, runs = _runs(repo)
    parent = next(r for r in runs.values() if r.data.tags["reprolab.role"] == "model")
    executions = {
        name: r
        for name, r in runs.items()
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    # The first `dvc repro` ran tune, train and evaluate once; the forced rerun is train #2.
    assert set(executions) == {"tune@mlp #1", "train@mlp #1", "train@mlp #2", "evaluate@mlp #1"}
    assert all(r.data.tags["reprolab.role"] == "execution" for r in executions.values())
    assert all(r.info.status == "FINISHED" for r in executions.values())
    trials = [r for r in runs.values() if r.data.tags.get("reprolab.role") == "trial"]
    assert len(trials) == 3  # TINY_PARAMS tune.n_trials, all nested under the tune run
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {
        executions["tune@mlp #1"].info.run_id
    }
    epochs = len((repo / "plots/curves/mlp.tsv").read_text().splitlines()) - 1
    for name in ("train@mlp #1", "train@mlp #2"):
        run_id = executions[name].info.run_id
        # Its own curve, once (the old shared run had one point per epoch per execution).
        assert len(client.get_metric_history(run_id, "final.val_loss")) == epochs
        assert len(client.get_metric_history(run_id, "train_seconds")) == 1
        # The rerun trained the same weights: it is tagged with the one registered version.
        assert executions[name].data.tags["reprolab.model_version"] == "models:/digits-mlp/1"
    assert "test_accuracy" in executions["evaluate@mlp #1"].data.metrics
    # The parent: a summary point per execution, at the execution's number.
    history = client.get_metric_history(parent.info.run_id, "train_seconds")
    assert sorted(m.step for m in history) == [1, 2]
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"

    # A SIGTERM while train runs (kept long: many epochs, no early stop) ends its run KILLED.
    set_params(repo, {"train": {"max_epochs": 10000, "patience": 10000}})
    stage = subprocess.Popen(
        [sys.executable, "stages/train.py", "mlp"],
        cwd=repo,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while "train@mlp #3" not in _runs(repo)[1]:
            assert stage.poll() is None, stage.communicate()
            assert time.monotonic() < deadline, "no run for the third train execution"
            time.sleep(0.2)
        stage.send_signal(signal.SIGTERM)
        _, stderr = stage.communicate(timeout=60)
    finally:
        stage.kill()
    assert stage.returncode == 1
    assert stderr.strip().splitlines()[-1] == (
        "train.py: terminated (SIGTERM); no output was replaced (writes are atomic)"
    )
    assert "Traceback" not in stderr
    killed = _runs(repo)[1]["train@mlp #3"]
    assert killed.info.status == "KILLED"
    assert killed.data.tags["reprolab.failure"] == "terminated (SIGTERM)"
    assert client.get_run(parent.info.run_id).info.status == "KILLED"
    # The earlier executions are untouched.
    assert _runs(repo)[1]["train@mlp #2"].info.status == "FINISHED"
