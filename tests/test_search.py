"""The search itself, in-process with a real Optuna storage and a fast stand-in objective:
per-model candidates, the exact budget, and every pruner surviving a kill."""

from __future__ import annotations

import math
import multiprocessing
import os
import socket
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from reprolab.core.io import file_lock
from reprolab.core.schema import TuneParams
from reprolab.learn.tensors import TensorData, subsample
from reprolab.tuning.worker import open_study, run_budget, sampler_seed

EPOCHS = 4


def storage_at(path: Path) -> RDBStorage:
    return RDBStorage(
        f"sqlite:///{path}",
        heartbeat_interval=1,
        grace_period=2,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
    )


def objective(die_in_trial: int | None = None, local: bool = True):
    """A smooth loss over (lr, weight decay) that improves per epoch, reported like the real
    objective; with ``die_in_trial``, the process dies (no cleanup) in that trial's epoch 2.
    ``local=False``: the trial says it runs on another machine, whose processes this one
    cannot check (run_budget names each trial's worker, host:pid, before it runs)."""
    started = []

    def run(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        wd = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
        assert trial.user_attrs["worker"] == f"{socket.gethostname()}:{os.getpid()}"
        if not local:
            trial.set_user_attr("worker", "a-machine-elsewhere:1")
        started.append(trial.number)
        value = math.nan
        for epoch in range(1, EPOCHS + 1):
            value = (math.log10(lr) + 2.5) ** 2 + (math.log10(wd) + 4) ** 2 / 10 + 1 / epoch
            trial.report(value, epoch)
            if die_in_trial is not None and len(started) == die_in_trial + 1 and epoch == 2:
                os._exit(9)  # a SIGKILL: no tell, no cleanup, the trial stays RUNNING
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    return run


def tune(kind: str = "median", n_trials: int = 8, startup: int = 3) -> TuneParams:
    return TuneParams(
        n_trials=n_trials,
        epochs=EPOCHS,
        sampler_startup_trials=startup,
        pruner={"kind": kind, "n_startup_trials": 2, "n_warmup_steps": 1, "reduction_factor": 2},
    )


def search(
    db: Path, model: str, params: TuneParams, die_in_trial: int | None = None, local: bool = True
) -> int:
    """The study's only worker (in order), as the tune stage with ``tune.workers: 1``."""
    storage = storage_at(db)
    seed = sampler_seed(42, model)
    study = open_study(f"study-{model}", seed, params, storage)
    claim = lambda: file_lock(db.with_suffix(".lock"))  # noqa: E731
    return run_budget(
        study, storage, claim, seed, params, objective(die_in_trial, local), in_order=True
    )


def finished(db: Path, model: str) -> list[tuple]:
    """(lr, weight decay, state, epochs reached, last value) of each finished trial, in
    order: what the study's outputs are made of."""
    study = optuna.load_study(study_name=f"study-{model}", storage=f"sqlite:///{db}")
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    return [
        (t.params["lr"], t.params["weight_decay"], t.state, t.last_step, t.intermediate_values)
        for t in sorted(trials, key=lambda t: t.number)
    ]


def test_each_model_draws_its_own_candidates_reproducibly(tmp_path: Path) -> None:
    params = tune(n_trials=5, startup=2)  # 2 random trials, then TPE
    runs = {
        (model, attempt): finished(tmp_path / f"{model}-{attempt}.db", model)
        for model in ("mlp", "cnn")
        for attempt in (0, 1)
        if search(tmp_path / f"{model}-{attempt}.db", model, params) == 5
    }
    assert len(runs) == 4
    mlp, cnn = [[(lr, wd) for lr, wd, *_ in runs[m, 0]] for m in ("mlp", "cnn")]
    assert all(a != b for a, b in zip(mlp, cnn, strict=True))  # no shared candidate
    assert runs["mlp", 0] == runs["mlp", 1] and runs["cnn", 0] == runs["cnn", 1]


def test_a_worker_stops_at_the_budget_counting_earlier_trials(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    assert search(db, "mlp", tune(n_trials=3)) == 3
    assert search(db, "mlp", tune(n_trials=5)) == 2  # 5 in all, not 5 more
    assert search(db, "mlp", tune(n_trials=5)) == 0
    assert len(finished(db, "mlp")) == 5


@pytest.mark.parametrize(
    "kind, local",
    [("median", True), ("successive_halving", True), ("hyperband", True), ("median", False)],
)
def test_every_pruner_resumes_a_killed_study_as_if_never_killed(
    kind: str, local: bool, tmp_path: Path
) -> None:
    """The killed worker's trial is retried first: at once when it names a dead process of
    this machine, else once its heartbeat is past the grace period (2 s here)."""
    params = tune(kind)
    search(tmp_path / "whole.db", "mlp", params)
    whole = finished(tmp_path / "whole.db", "mlp")
    assert any(state == TrialState.PRUNED for _, _, state, *_ in whole), "nothing was pruned"

    killed = tmp_path / "killed.db"
    child = multiprocessing.get_context("fork").Process(
        target=search, args=(killed, "mlp", params, 4, local)
    )
    child.start()
    child.join(60)
    assert child.exitcode == 9
    study = optuna.load_study(study_name="study-mlp", storage=f"sqlite:///{killed}")
    assert [t.state for t in study.trials].count(TrialState.RUNNING) == 1
    started = time.monotonic()
    search(killed, "mlp", params, local=local)
    waited = time.monotonic() - started
    assert waited < 2 if local else waited >= 3, waited
    assert finished(killed, "mlp") == whole


def test_a_retried_trial_is_never_taken_for_its_dead_workers(tmp_path: Path) -> None:
    """A retry inherits the dead worker's attributes; another worker's claim meanwhile (here
    at the start of each trial) must find it alive, not fail it and crash its tell."""
    import subprocess

    from reprolab.tuning.storage import fail_dead_trials

    db, params = tmp_path / "s.db", tune(n_trials=2)
    storage, seed = storage_at(db), sampler_seed(42, "mlp")
    study = open_study("study-mlp", seed, params, storage)
    gone = subprocess.Popen(["true"])
    gone.wait()
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{gone.pid}")
    storage.record_heartbeat(trial._trial_id)
    claim = lambda: file_lock(db.with_suffix(".lock"))  # noqa: E731
    run = objective()

    def after_another_workers_claim(trial: optuna.Trial) -> float:
        with claim():
            assert fail_dead_trials(study) == 0
        return run(trial)

    assert run_budget(study, storage, claim, seed, params, after_another_workers_claim) == 2
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 2
    assert states.count(TrialState.FAIL) == 1  # the dead worker's, retried once


def test_trial_subsample_is_stratified_seeded_and_ordered() -> None:
    y = torch.tensor([0] * 80 + [1] * 20)
    data = TensorData(x=torch.arange(100).view(100, 1), y=y)
    part = subsample(data, 10, seed=3, stratify=True)
    assert part.y.tolist().count(1) == 2 and len(part) == 10
    assert torch.equal(part.x.view(-1), part.x.view(-1).sort().values)  # original order kept
    assert torch.equal(part.x, subsample(data, 10, seed=3, stratify=True).x)
    assert not torch.equal(part.x, subsample(data, 10, seed=4, stratify=True).x)
    assert subsample(data, None, seed=3, stratify=True) is data
    assert subsample(data, 1000, seed=3, stratify=False) is data
    assert np.array_equal(part.y.numpy(), y.numpy()[part.x.view(-1).numpy()])
