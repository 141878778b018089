"""Crashes and bad input: a killed stage leaves no half-written output and the next
`dvc repro` finishes; a diverging trial is pruned and the study goes on; bad input stops a
stage with an error naming the cause and touches nothing; checkpoints never unpickle code."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from conftest import (
    TINY_PARAMS,
    clean_env,
    copy_repo,
    md5s,
    mlflow_runs,
    run,
    set_params,
    stages_run,
)

from reprolab.core.errors import CheckpointError
from reprolab.learn.checkpoints import load_model, save_model
from reprolab.models._base import ModelSpec, build_model


def every_md5(repo: Path) -> dict[str, str]:
    """md5 of every file of the repo: data, models, metrics, stores, params, git."""
    skip = (".dvc/tmp/", "__pycache__/")
    return {
        rel: hashlib.md5(path.read_bytes()).hexdigest()
        for path in sorted(repo.rglob("*"))
        if path.is_file() and not any(s in (rel := path.relative_to(repo).as_posix()) for s in skip)
    }


def stage_script(repo: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    """A stage script run as dvc.yaml runs it (repo root, PYTHONPATH=src), without DVC,
    which removes a stage's outputs before running it."""
    return subprocess.run(
        [sys.executable, f"stages/{script}", *args],
        cwd=repo,
        env=clean_env(PYTHONPATH="src"),
        capture_output=True,
        text=True,
        timeout=600,
    )


def truncate_checkpoint(repo: Path) -> None:
    weights = repo / "models/mlp/model.pt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


BAD_INPUT = {
    # case: (params override, file damage, stage script and args, what the error names)
    "cuda without a GPU": (
        {"device": "cuda"},
        None,
        ("train.py", "mlp"),
        "device: 'cuda' requested but no CUDA GPU",
    ),
    "missing dataset path": (
        {"datasets": {"image": "imagefolder"}, "imagefolder": {"path": "no/such/folder"}},
        None,
        ("download.py", "image"),
        "imagefolder.path: folder 'no/such/folder' does not exist",
    ),
    "corrupt checkpoint": (
        {},
        truncate_checkpoint,
        ("evaluate.py", "mlp"),
        "models/mlp/model.pt: cannot load",
    ),
    "typo'd params key": (
        {"train": {"max_epoch": 5}},
        None,
        ("train.py", "mlp"),
        "train.max_epoch: unknown key",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_INPUT), ids=list(BAD_INPUT))
def test_bad_input_is_a_clear_error_that_touches_nothing(
    case: str, tiny_pipeline: dict, tmp_path: Path
) -> None:
    override, damage, (script, *args), cause = BAD_INPUT[case]
    if case == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    repo = copy_repo(tiny_pipeline["repo"], tmp_path / "repo")
    if override:
        set_params(repo, override)
    if damage:
        damage(repo)
    before = every_md5(repo)
    result = stage_script(repo, script, *args)
    assert result.returncode != 0
    assert cause in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert every_md5(repo) == before


@pytest.mark.slow
def test_a_diverging_trial_is_pruned_with_its_reason_and_the_study_goes_on(
    tiny_pipeline: dict, tmp_path: Path
) -> None:
    repo = copy_repo(tiny_pipeline["repo"], tmp_path / "repo")
    n_trials = 4
    set_params(
        repo,
        {
            # SGD without decay: above lr ~10 the weights blow up to inf/NaN within an epoch.
            "classifiers": {"mlp": {"optimizer": "sgd"}},
            "tune": {
                "n_trials": n_trials,
                "lr": {"low": 1.0e-2, "high": 1.0e6},
                "sampler_startup_trials": n_trials,
            },
        },
    )
    result = stage_script(repo, "tune.py", "mlp")
    assert result.returncode == 0, result.stderr[-3000:]
    best = json.loads((repo / "models/mlp/best_params.json").read_text())
    study = optuna.load_study(
        study_name=best["study"], storage=f"sqlite:///{repo / '.optuna/studies.db'}"
    )
    states = optuna.trial.TrialState
    finished = study.get_trials(states=(states.COMPLETE, states.PRUNED))
    assert len(finished) == n_trials
    diverged = [t for t in finished if "diverged" in t.user_attrs.get("pruned_reason", "")]
    assert diverged, [(t.params["lr"], t.state.name) for t in finished]
    assert all(t.state == states.PRUNED for t in diverged)
    assert any(t.state == states.COMPLETE for t in finished)
    for trial in diverged:
        assert f"mlp trial {trial.number} pruned: loss diverged at epoch" in result.stderr
    assert best["lr"] < 10


@pytest.mark.slow
def test_sigkilled_train_leaves_no_half_file_and_the_next_repro_finishes(
    tiny_pipeline: dict, tmp_path: Path
) -> None:
    """train@mlp killed mid-training (an endless run); the next repro, with a finite run,
    finishes and every output is whole."""
    import psutil

    repo = copy_repo(tiny_pipeline["repo"], tmp_path / "repo")
    outputs = ["models/mlp/model.pt", "models/mlp/model.json", "metrics/mlp/train.json"]
    # An endless training run: no early stop (patience is tune's param too: tune@mlp reruns).
    before = md5s(repo, outputs)
    set_params(repo, {"train": {"max_epochs": 100_000, "patience": 100_000}})
    proc = subprocess.Popen(
        ["dvc", "repro", "train@mlp"],
        cwd=repo,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # until the stage has trained for a while
            # The python process, and the `/bin/sh -c` around it where the shell does not exec
            # (dash, DVC's shell when $SHELL is unset): the busiest one is the stage.
            cpu = []
            for child in psutil.Process(proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):  # one that ended meanwhile
                    if "stages/train.py" in " ".join(child.cmdline()):
                        cpu.append(sum(child.cpu_times()[:2]))
            if max(cpu, default=0.0) > 8:  # imports take ~5 s
                break
            assert proc.poll() is None, "dvc repro ended before the kill"
            time.sleep(0.5)
        else:
            raise AssertionError("train@mlp never got going")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    recorded = lock["train@mlp"]["params"]["params.yaml"]["train"]["max_epochs"]
    assert recorded == TINY_PARAMS["train"]["max_epochs"]  # the killed run recorded nothing
    # The outputs are persist: true, so DVC left them; the killed run replaced none of them:
    # each is still the whole file of the last finished run.
    assert md5s(repo, outputs) == before

    set_params(repo, {"train": {"max_epochs": 4}})  # train's param only: tune stays done
    result = run(["dvc", "repro", "train@mlp"], repo)
    assert stages_run(result.stdout) == ["train@mlp"]
    load_model(repo / "models/mlp")
    assert json.loads((repo / "metrics/mlp/train.json").read_text())["train"]["epochs_run"] <= 4
    assert "train@mlp" not in run(["dvc", "status", "train@mlp"], repo).stdout
    strays = [p for p in repo.rglob(".*.tmp") if not {".git", ".dvc"} & set(p.parts)]
    assert not strays, strays
    # MLflow: each execution of train@mlp is a run of its own under the model's parent run
    # (the new patience made a new study: tune reran), and the SIGKILLed one (no handler
    # runs) was ended KILLED by the next execution.
    client, runs = mlflow_runs(repo, "mlp")
    parent = next(r for r in runs.values() if r.data.tags["reprolab.role"] == "model")
    trains = {n: r for n, r in runs.items() if r.data.tags.get("reprolab.stage") == "train@mlp"}
    assert {n: r.info.status for n, r in trains.items()} == {
        "train@mlp #1": "KILLED",
        "train@mlp #2": "FINISHED",
    }
    assert trains["train@mlp #1"].data.tags["reprolab.failure"] == "its process was killed"
    finished = trains["train@mlp #2"].info.run_id
    # Its own curve and time, once (an execution never appends to an earlier run's).
    assert 1 <= len(client.get_metric_history(finished, "final.val_loss")) <= 4
    assert len(client.get_metric_history(finished, "train_seconds")) == 1
    # The parent: a summary point per finished execution, at its number.
    history = client.get_metric_history(parent.info.run_id, "train_seconds")
    assert [m.step for m in history] == [2]
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


def test_a_sigtermed_stage_ends_its_execution_run_killed_in_one_line(
    tiny_pipeline: dict, tmp_path: Path
) -> None:
    """SIGTERM (kill, a scheduler, CI's cancel) in the middle of train@mlp: one line, and
    that execution's MLflow run (and its parent's status) KILLED; the earlier run untouched."""
    repo = copy_repo(tiny_pipeline["repo"], tmp_path / "repo")
    set_params(repo, {"train": {"max_epochs": 100_000, "patience": 100_000}})  # endless
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
        while "train@mlp #2" not in mlflow_runs(repo, "mlp")[1]:
            assert stage.poll() is None, stage.communicate()
            assert time.monotonic() < deadline, "no run for the second train execution"
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
    client, runs = mlflow_runs(repo, "mlp")
    killed = runs["train@mlp #2"]
    assert killed.info.status == "KILLED"
    assert killed.data.tags["reprolab.failure"] == "terminated (SIGTERM)"
    assert client.get_run(killed.data.tags["mlflow.parentRunId"]).info.status == "KILLED"
    assert runs["train@mlp #1"].info.status == "FINISHED"


class _RunsCode:
    """A pickle payload: unpickling it would call ``Path.touch`` on ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoints_load_weights_only_and_never_run_pickled_code(tmp_path: Path) -> None:
    spec = ModelSpec("mlp", {"hidden": [8]}, (1, 4, 4), 3, [0.0], [1.0])
    folder = tmp_path / "model"
    model = build_model(spec)
    save_model(model, spec, folder, {})
    loaded, _ = load_model(folder)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)

    marker = tmp_path / "pwned"
    torch.save({"payload": _RunsCode(marker)}, folder / "model.pt")
    with pytest.raises(CheckpointError, match="model.pt: cannot load"):
        load_model(folder)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("key", ["../../notes", "../../../outside"])
def test_a_model_key_with_path_characters_deletes_nothing_whatever_dvc_runs(
    key: str, tiny_pipeline: dict, tmp_path: Path
) -> None:
    """DVC removes a stage's outputs before running it, and `dvc repro -s` runs no check
    first: outputs named after params keys are persist: true, so nothing a key can name is
    deleted, in the repo or outside it, and the stage refuses the name."""
    repo = copy_repo(tiny_pipeline["repo"], tmp_path / "a" / "b" / "repo")
    victims = [
        repo / "notes.tsv",
        tmp_path / "a" / "outside.tsv",
        tmp_path / "a" / "b" / "outside.tsv",
    ]
    for victim in victims:
        victim.write_text("precious\n")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["classifiers"][key] = {"arch": "mlp"}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["dvc", "repro", "-s", f"tune@{key}"], ["dvc", "repro"]):
        result = run(command, repo, check=False)
        assert result.returncode != 0, result.stdout[-2000:]
        assert all(v.read_text() == "precious\n" for v in victims), command
