"""`reprolab verify`: a real rerun of locked stages in a scratch copy, compared with dvc.lock;
identical on a fresh result, a named difference (with the largest numeric difference of a JSON
metric) when an output differs, and the workspace untouched either way."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import copy_repo, md5s, run
from mlflow.tracking import MlflowClient

from reprolab.verify import dir_md5, largest_difference

pytestmark = pytest.mark.slow
STAGES = ["split@image", "evaluate@mlp"]


def _registered_versions(repo: Path) -> int:
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    return len(MlflowClient().search_model_versions())


def test_verify_reruns_locked_stages_identically_without_touching_the_workspace(
    tiny_pipeline: dict, tmp_path: Path
) -> None:
    repo = copy_repo(tiny_pipeline["repo"], tmp_path / "repo")
    before = md5s(repo, ["dvc.lock", "data/splits/image/*", "metrics/mlp/*", "plots/*/*"])
    versions = _registered_versions(repo)
    result = run(["reprolab", "verify", *STAGES], repo)
    lines = result.stdout.splitlines()
    assert "metrics/mlp/test.json  identical" in result.stdout, result.stdout
    assert sum(line.endswith("  identical") for line in lines) == 6, result.stdout
    assert lines[-1] == "6 of 6 outputs identical to dvc.lock"
    assert md5s(repo, ["dvc.lock", "data/splits/image/*", "metrics/mlp/*", "plots/*/*"]) == before
    # Its MLflow runs went to a separate experiment; the registry did not grow.
    client = MlflowClient()
    assert client.get_experiment_by_name("reprolab-digits-verify") is not None
    assert _registered_versions(repo) == versions


def test_verify_names_an_output_that_differs_and_exits_1(
    tiny_pipeline: dict, tmp_path: Path
) -> None:
    """As on a machine whose result differs: dvc.lock and the workspace's test metrics say
    accuracy 0.5; the rerun computes the real one."""
    repo = copy_repo(tiny_pipeline["repo"], tmp_path / "repo")
    metrics_path = repo / "metrics/mlp/test.json"
    metrics = json.loads(metrics_path.read_text())
    true_accuracy = metrics["accuracy"]
    metrics["accuracy"] = 0.5
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    for out in lock["stages"]["evaluate@mlp"]["outs"]:
        if out["path"] == "metrics/mlp/test.json":
            out["md5"] = md5s(repo, ["metrics/mlp/test.json"])["metrics/mlp/test.json"]
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    result = run(["reprolab", "verify", "evaluate@mlp"], repo, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if "metrics/mlp/test.json" in x)
    assert " differs " in line
    assert f"largest difference {abs(true_accuracy - 0.5):.3g}" in line
    assert "plots/confusion/mlp.csv  identical" in result.stdout
    assert json.loads(metrics_path.read_text())["accuracy"] == 0.5  # the workspace untouched


def test_verify_refuses_an_unknown_stage_in_one_line(tiny_pipeline: dict) -> None:
    result = run(["reprolab", "verify", "train@nosuch"], tiny_pipeline["repo"], check=False)
    assert result.returncode != 0
    assert result.stderr.strip().startswith("error: not in dvc.lock: train@nosuch;")
    assert "Traceback" not in result.stderr


def test_largest_difference_and_dvc_dir_hash(tiny_pipeline: dict) -> None:
    assert largest_difference({"a": 1.0, "b": [1, 2]}, {"a": 1.25, "b": [1, 3]}) == 1.0
    assert largest_difference({"a": 1}, {"b": 1}) is None
    lock = yaml.safe_load((tiny_pipeline["repo"] / "dvc.lock").read_text())
    (raw,) = lock["stages"]["download@image"]["outs"]
    assert dir_md5(tiny_pipeline["repo"] / raw["path"]) == raw["md5"]
