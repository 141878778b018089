"""Optuna resume: a tune stage killed mid-study finishes the same study on the next repro."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from conftest import clean_env, run, set_params

from reprolab.tuning import HEARTBEAT_S

pytestmark = pytest.mark.slow

N_TRIALS = 8


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(
        states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    )


def wait_for_trials(storage: str, count: int, timeout: float = 420) -> optuna.Study:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            summaries = optuna.get_all_study_summaries(storage)
        except Exception:  # the database is still being created
            summaries = []
        for summary in summaries:
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            if len(finished(study)) >= count:
                return study
        time.sleep(0.2)
    raise AssertionError(f"no study reached {count} finished trials in {timeout}s")


def test_sigkilled_tune_resumes_its_study_to_exactly_n_trials(tiny_repo: Path) -> None:
    set_params(tiny_repo, {"tune": {"n_trials": N_TRIALS, "epochs": 15}})
    run(["dvc", "repro", "split"], tiny_repo)
    storage = f"sqlite:///{tiny_repo / '.optuna' / 'studies.db'}"
    proc = subprocess.Popen(
        ["dvc", "repro", "tune@mlp"],
        cwd=tiny_repo,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        study = wait_for_trials(storage, 2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = len(finished(study))
    assert before < N_TRIALS, "the kill came too late to test a resume"
    assert not (tiny_repo / "models/mlp/best_params.json").exists()

    time.sleep(2 * HEARTBEAT_S + 1)  # past the heartbeat grace period: the killed trial is stale
    run(["dvc", "repro", "tune@mlp"], tiny_repo)

    study = optuna.load_study(study_name=study.study_name, storage=storage)
    assert len(finished(study)) == N_TRIALS
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) <= 1  # the trial running at the kill
    assert optuna.trial.TrialState.RUNNING not in states
    best = json.loads((tiny_repo / "models/mlp/best_params.json").read_text())
    assert best["study"] == study.study_name  # resumed, not restarted
    assert len(optuna.get_all_study_summaries(storage)) == 1
