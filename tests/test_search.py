"""The search itself, in-process with a real Optuna storage and a fast stand-in objective:
per-model candidates, the exact budget, every pruner surviving a kill, and the same trials
with any number of workers (forked processes on SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime
import math
import multiprocessing
import os
import random
import socket
import threading
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
from reprolab.tuning.batches import slot_of
from reprolab.tuning.pruners import SlotHyperband, make_pruner
from reprolab.tuning.storage import study_lock
from reprolab.tuning.worker import open_study, run_budget, sampler_seed

EPOCHS = 4


def storage_at(url: str) -> RDBStorage:
    return RDBStorage(
        url,
        heartbeat_interval=1,
        grace_period=2,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
    )


def objective(die_in_slot: int | None = None, local: bool = True, jitter: float = 0.0, died=None):
    """A smooth loss over (lr, weight decay) that improves per epoch, reported like the real
    objective; with ``die_in_slot``, the process that runs that slot dies (no cleanup) in its
    epoch 2, unless the event ``died`` (shared by forked workers) says one died already.
    ``local=False``: the trial says it runs on another machine, whose processes this one
    cannot check (run_budget names each trial's worker, host:pid, before it runs).
    ``jitter``: each epoch sleeps up to that many seconds, unseeded, so that parallel
    workers finish their trials in a different order every run."""
    timing = random.Random(os.getpid() ^ time.perf_counter_ns())
    died = threading.Event() if died is None else died

    def run(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        wd = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
        assert trial.user_attrs["worker"] == f"{socket.gethostname()}:{os.getpid()}"
        if not local:
            trial.set_user_attr("worker", "a-machine-elsewhere:1")
        value = math.nan
        for epoch in range(1, EPOCHS + 1):
            value = (math.log10(lr) + 2.5) ** 2 + (math.log10(wd) + 4) ** 2 / 10 + 1 / epoch
            trial.report(value, epoch)
            time.sleep(timing.random() * jitter)
            dies = die_in_slot is not None and slot_of(trial) == die_in_slot and epoch == 2
            if dies and not died.is_set():
                died.set()
                os._exit(9)  # a SIGKILL: no tell, no cleanup, the trial stays RUNNING
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    return run


def tune(kind: str = "median", n_trials: int = 8, startup: int = 3, batch: int = 1) -> TuneParams:
    return TuneParams(
        n_trials=n_trials,
        epochs=EPOCHS,
        batch=batch,
        sampler_startup_trials=startup,
        pruner={"kind": kind, "n_startup_trials": 2, "n_warmup_steps": 1, "reduction_factor": 2},
    )


def search(
    db: Path | str,
    model: str,
    params: TuneParams,
    die_in_slot: int | None = None,
    local: bool = True,
    jitter: float = 0.0,
    name: str | None = None,
    gate=None,
    died=None,
) -> int:
    """One worker of the study (the tune stage's, or a `reprolab tune-worker`): ``db`` an
    SQLite file or an RDB URL; the study ``name`` (default study-<model>). ``gate``: a
    barrier the workers started together pass once each has its study open."""
    url = db if isinstance(db, str) else f"sqlite:///{db}"
    storage = storage_at(url)
    seed = sampler_seed(42, model)
    study = open_study(name or f"study-{model}", seed, params, storage)
    claim = study_lock(storage, study.study_name)
    if gate is not None:
        gate.wait(60)
    return run_budget(
        study, storage, claim, seed, params, objective(die_in_slot, local, jitter, died)
    )


def finished(db: Path | str, model: str, name: str | None = None) -> list[tuple]:
    """(lr, weight decay, state, epochs reached, last value) of each finished trial, in
    order of their slots: what the study's outputs are made of."""
    url = db if isinstance(db, str) else f"sqlite:///{db}"
    study = optuna.load_study(study_name=name or f"study-{model}", storage=url)
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert sorted(map(slot_of, trials)) == list(range(len(trials)))  # each slot once
    return [
        (t.params["lr"], t.params["weight_decay"], t.state, t.last_step, t.intermediate_values)
        for t in sorted(trials, key=slot_of)
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
    resumed = datetime.datetime.now()  # Optuna's clock: local, naive
    search(killed, "mlp", params, local=local)
    (failed,) = study.get_trials(states=(TrialState.FAIL,))
    if local:  # failed by the resumed worker's first claim, not after the grace period
        assert (failed.datetime_complete - resumed).total_seconds() < 2
    else:  # another machine's worker is failed only once its heartbeat is stale (2 s)
        assert (failed.datetime_complete - failed.datetime_start).total_seconds() >= 2
    assert finished(killed, "mlp") == whole


def test_hyperband_draws_brackets_from_the_seed_and_slot_not_the_study_name(
    tmp_path: Path,
) -> None:
    """The study name carries the code's fingerprint: under a new name (after a refactor)
    the same trials run, each in the same bracket; another seed draws other brackets."""
    params = tune("hyperband", n_trials=12, startup=2, batch=3)

    def brackets(pruner: SlotHyperband, study: optuna.Study) -> list[int]:
        pruner._try_initialization(study)
        return [pruner._get_bracket_id(study, t) for t in study.trials]

    runs = []
    for name in ("digits.mlp.0b6e73350e3f", "digits.mlp.9c41d2e07a58"):
        search(tmp_path / f"{name}.db", "mlp", params, name=name)
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / name}.db")
        runs.append((finished(tmp_path / f"{name}.db", "mlp", name), study))
    (trials, study), (renamed_trials, renamed) = runs
    assert trials == renamed_trials
    drawn = brackets(make_pruner(params, sampler_seed(42, "mlp")).inner, study)
    assert drawn == brackets(make_pruner(params, sampler_seed(42, "mlp")).inner, renamed)
    assert len(set(drawn)) > 1  # more than one bracket: the draw is tested
    other_seed = SlotHyperband(7, min_resource=1, max_resource=EPOCHS, reduction_factor=2)
    assert brackets(other_seed, study) != drawn


def test_a_retried_trial_is_never_taken_for_its_dead_workers(tmp_path: Path) -> None:
    """A retry inherits the dead worker's attributes; another worker's claim meanwhile (here
    at the start of each trial) must find it alive, not fail it and crash its tell."""
    import subprocess

    from reprolab.tuning.storage import fail_dead_trials

    db, params = tmp_path / "s.db", tune(n_trials=2)
    storage, seed = storage_at(f"sqlite:///{db}"), sampler_seed(42, "mlp")
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


# (workers from the start, a worker joining once this many trials finished, the slot in
# which its worker dies): every way of running the study must give the same trials.
WAYS = [(2, None, None), (4, None, None), (1, 3, None), (2, None, 1)]


def parallel(url: str, params: TuneParams, way: tuple, name: str = "study-mlp") -> set[str]:
    """Run the study ``name`` with forked workers as ``way`` says; return who ran trials."""
    workers, join_after, die = way
    # The tables first (the stage's workers take a lock for that: storage._schema_lock).
    open_study(name, sampler_seed(42, "mlp"), params, storage_at(url))
    fork = multiprocessing.get_context("fork")
    # The workers started together begin their trials together (a loaded machine can take
    # longer to start one than another needs for the whole study).
    gate, died = fork.Barrier(workers), fork.Event()
    procs = [
        fork.Process(
            target=search,
            args=(url, "mlp", params),
            kwargs={
                "jitter": 0.03,
                "name": name,
                "die_in_slot": die,
                "gate": gate if i < workers else None,
                "died": died,
            },
        )
        for i in range(workers + (join_after is not None))
    ]
    for process in procs[:workers]:
        process.start()
    if join_after is not None:
        deadline = time.monotonic() + 60
        while len(finished_so_far(url, name)) < join_after and time.monotonic() < deadline:
            time.sleep(0.05)
        procs[-1].start()
    for process in procs:
        process.join(120)
    exits = sorted(process.exitcode for process in procs)
    assert exits == [0] * (len(procs) - (die is not None)) + [9] * (die is not None), way
    return {t.user_attrs["worker"] for t in finished_so_far(url, name)}


def finished_so_far(url: str, name: str) -> list:
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:  # not created yet
        return []
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def check_any_number_of_workers(
    url_of, params: TuneParams, tmp_path: Path, ways: list[tuple] = WAYS
) -> None:
    """The trials of ``way``s of running one study (each in a database of its own: the same
    study name, as every checkout computes it) equal those of a single worker's run."""
    search(tmp_path / "one.db", "mlp", params)
    one = finished(tmp_path / "one.db", "mlp")
    states = [state for _, _, state, *_ in one]
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    for way in ways:
        for attempt in range(3):  # a joining worker may come too late on a loaded machine
            url = url_of("w" + "_".join(map(str, way)).lower() + f"_{attempt}")
            ran = parallel(url, params, way)
            assert finished(url, "mlp") == one, way  # every attempt: the same trials
            if len(ran) >= 2 or way[2] is not None:
                break
        assert len(ran) >= 2 or way[2] is not None, f"{way}: one worker ran every trial"
        if way[2] is None:  # and numbered alike (a killed trial's retry gets a new number)
            study = optuna.load_study(study_name="study-mlp", storage=url)
            assert [slot_of(t) for t in sorted(study.trials, key=lambda t: t.number)] == list(
                range(params.n_trials)
            )


@pytest.mark.parametrize("kind, ways", [("median", WAYS), ("successive_halving", WAYS[1::2])])
def test_the_trials_are_the_same_with_any_number_of_workers(
    kind: str, ways: list[tuple], tmp_path: Path
) -> None:
    """Batches of 3: 2 random trials, then TPE; pruning from the second batch on."""
    params = tune(kind, n_trials=8, startup=2, batch=3)
    url_of = lambda name: f"sqlite:///{tmp_path / name}.db"  # noqa: E731
    check_any_number_of_workers(url_of, params, tmp_path, ways)


def test_the_trials_on_postgresql_equal_a_single_sqlite_workers(
    postgres_url: str, tmp_path: Path
) -> None:
    import sqlalchemy

    def database(name: str) -> str:
        engine = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        engine.dispose()
        return postgres_url.rsplit("/", 1)[0] + f"/{name}"

    params = tune("hyperband", n_trials=12, startup=2, batch=3)
    check_any_number_of_workers(database, params, tmp_path, WAYS[:3:2])


def test_the_batch_size_is_what_changes_the_trials(tmp_path: Path) -> None:
    """Not the worker count, but tune.batch: batch 4 draws its TPE trials from fewer
    finished ones than batch 1 (sequential TPE) does."""
    runs = {}
    for batch in (1, 4):
        search(tmp_path / f"b{batch}.db", "mlp", tune(n_trials=8, startup=2, batch=batch))
        runs[batch] = finished(tmp_path / f"b{batch}.db", "mlp")
    assert runs[1][:2] == runs[4][:2]  # the random startup trials: seeded by their slots
    assert runs[1][2:] != runs[4][2:]


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
