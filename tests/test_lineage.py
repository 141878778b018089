"""MLflow lineage on a real SQLite store: every run lists the splits it read as dataset
inputs (DVC md5 as digest, context), once; a checkout that differs from its commit logs the
diff with the run."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import clean_env
from mlflow.tracking import MlflowClient

from reprolab.core.params import validate_params
from reprolab.tracking.lineage import code_diff
from reprolab.tracking.runs import Tracker, execution
from reprolab.tracking.tags import stage_tags


def _git_repo(path: Path) -> None:
    env = clean_env()
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=path, env=env, check=True)


def test_runs_carry_their_split_inputs_once_and_the_code_diff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    _git_repo(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = validate_params({"classifiers": {"mlp": {"arch": "mlp"}}}, options_of=[])
    data = [
        ("train", "data/splits/image/train.npz", "a" * 32),
        ("val", "data/splits/image/val.npz", "b" * 32),
    ]
    tags = stage_tags("cpu", params, data)
    tracker = Tracker("digits", "mlp", "study-1")
    parent = tracker.parent_run_id(tags)
    tracker.parent_run_id(tags)  # a second stage logging into the same parent run
    child = tracker.start_child(parent, "trial-0", tags)
    client = MlflowClient()
    for run_id in (parent, child):
        inputs = client.get_run(run_id).inputs.dataset_inputs
        found = {(i.dataset.name, i.dataset.digest, i.tags[0].value) for i in inputs}
        assert found == {
            ("digits-train", "a" * 32, "train"),
            ("digits-val", "b" * 32, "validation"),
        }
    run = client.get_run(parent)
    assert run.data.tags["reprolab.git_dirty"] == "false"
    assert run.data.tags["reprolab.numerics.mode"] == "portable"
    # As inside `dvc exp run -S seed=2`: the params differ from the commit.
    (tmp_path / "params.yaml").write_text("seed: 2\n")
    code_diff.cache_clear()  # the diff is read once per process; a new stage is a new process
    dirty = Tracker("digits", "mlp", "study-2").parent_run_id(tags)
    assert client.get_run(dirty).data.tags["reprolab.git_dirty"] == "true"
    diff = Path(client.download_artifacts(dirty, "lineage/git.diff", str(tmp_path))).read_text()
    assert "-seed: 1" in diff and "+seed: 2" in diff


def test_a_new_untracked_code_file_makes_the_run_dirty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new arch module git does not track yet is code the run used: dirty, and its text
    is in the diff; an untracked file outside the code (a note) is not."""
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    _git_repo(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not code\n")
    code_diff.cache_clear()
    assert code_diff() == ""
    (tmp_path / "src" / "reprolab" / "models").mkdir(parents=True)
    (tmp_path / "src" / "reprolab" / "models" / "new_arch.py").write_text("WIDTH = 3\n")
    code_diff.cache_clear()
    assert "+WIDTH = 3" in code_diff() and "notes.txt" not in code_diff()
    code_diff.cache_clear()


def stage_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    """The cwd a stage of model mlp runs in, with its own MLflow store."""
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "params.yaml").write_text("classifiers: {mlp: {arch: mlp}}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr("sys.argv", [script, "mlp"])


@pytest.mark.parametrize(
    ("raised", "status"),
    [("error", "FAILED"), ("interrupt", "KILLED"), ("bug", "FAILED")],
)
def test_a_failing_stage_ends_the_runs_it_left_running(
    raised: str, status: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reprolab.core.errors import DivergedError
    from reprolab.core.stage import _terminate as stage_handler
    from reprolab.core.stage import run_stage

    stage_workspace(tmp_path, monkeypatch, "train.py")
    opened = []

    def body(params, args) -> None:
        tracker = Tracker("digits", "mlp", f"study-{raised}")
        opened.append(tracker.parent_run_id({}))
        if raised == "error":
            raise DivergedError("loss diverged at epoch 3")
        if raised == "interrupt":
            raise KeyboardInterrupt
        raise RuntimeError("a bug")

    with pytest.raises((SystemExit, RuntimeError)):
        run_stage("a stage", body, model_arg=True)
    assert signal.getsignal(signal.SIGTERM) is not stage_handler  # pytest's is back
    run = MlflowClient().get_run(opened[0])
    assert run.info.status == status
    assert run.data.tags["reprolab.failure"] in (
        "loss diverged at epoch 3",
        "interrupted (Ctrl-C)",
        "RuntimeError: a bug",
    )


def test_a_sigtermed_stage_ends_its_runs_as_killed_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM left the stage's MLflow runs RUNNING and printed nothing: now as Ctrl-C."""
    import signal

    from reprolab.core.stage import run_stage

    stage_workspace(tmp_path, monkeypatch, "tune.py")
    opened = []

    def body(params, args) -> None:
        tracker = execution("digits", "mlp", "study-sigterm", "tune@mlp", {})
        opened.extend([tracker.run_id, tracker.parent])
        # Without the stage's handler SIGTERM would end this test process itself.
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None), "no handler"
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the stage")

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exited:
        run_stage("a stage", body, model_arg=True)
    assert str(exited.value) == (
        "tune.py: terminated (SIGTERM); no output was replaced (writes are atomic)"
    )
    for run_id in opened:  # this execution's run, and its parent while it ran
        run = MlflowClient().get_run(run_id)
        assert run.info.status == "KILLED"
        assert run.data.tags["reprolab.failure"] == "terminated (SIGTERM)"
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the stage's only
