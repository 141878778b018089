"""What a user types first: `make help`, and drawing the DAG in a readable width."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, run

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def test_make_help_shows_values_not_variable_names() -> None:
    shown = subprocess.run(
        ["make", "-s", "help", "VENV=/opt/rl-venv", "UI_PORT=5123", "DASHBOARD_PORT=8123"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "$(" not in shown, shown
    assert "create /opt/rl-venv and install" in shown
    assert "http://127.0.0.1:5123" in shown and "http://127.0.0.1:8123" in shown


def test_readme_draws_the_dag_with_mermaid_which_fits_a_page(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    assert "`dvc dag --mermaid`" in readme and "`dvc dag --dot" in readme
    for rel in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / rel, tmp_path / rel)
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc/config").write_text("[core]\n    no_scm = true\n")
    drawn = run(["dvc", "dag", "--mermaid"], tmp_path).stdout
    assert drawn.startswith("flowchart") and '"report"' in drawn
    assert max(map(len, drawn.splitlines())) <= 100


def test_ui_lands_on_the_projects_runs_without_a_browser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """MLflow 3's UI opens an experiment on GenAI traces unless its kind says otherwise:
    reprolab's experiments carry that kind, and `make ui` prints each one's runs page."""
    from mlflow.tracking import MlflowClient

    from reprolab.tracking.pages import KIND, KIND_TAG, main
    from reprolab.tracking.runs import Tracker

    database = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    experiment = Tracker("digits", "mlp", "study").experiment_id
    tags = MlflowClient(f"sqlite:///{database}").get_experiment(experiment).tags
    assert tags[KIND_TAG] == KIND == "custom_model_development"
    assert main([str(database), "http://127.0.0.1:5000"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"reprolab-digits: http://127.0.0.1:5000/#/experiments/{experiment}/runs"]


def test_ui_pages_read_the_store_without_creating_one(tmp_path: Path) -> None:
    from reprolab.tracking.pages import main, runs_pages

    database = tmp_path / "mlflow.db"
    assert runs_pages(database, "http://127.0.0.1:5000") == []
    assert main([str(database), "http://127.0.0.1:5000"]) == 0
    assert not database.exists()
