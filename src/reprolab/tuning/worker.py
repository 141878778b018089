"""Optuna tuning of learning rate and weight decay on the validation split.

Storage and locks, study name, objective and pruners have their own modules. The ``tune``
stage runs ``tune.workers`` workers; ``reprolab tune-worker`` adds more. Finished trials count
toward ``n_trials`` across resumes and workers: a worker asks for a trial only under the
study's lock, while running + finished trials are fewer (MaxTrialsCallback overshoots). A
dead worker's trial is failed (at once on this machine, else by the heartbeat check) and
retried with the same params; workers wait for running trials, so the budget is exact.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from reprolab.core.errors import TuningError
from reprolab.core.schema import Params, TuneParams
from reprolab.learn.context import ModelContext
from reprolab.learn.tasks import get_task
from reprolab.tracking.runs import Tracker, flatten
from reprolab.tuning import storage as stores
from reprolab.tuning.identity import study_name
from reprolab.tuning.labels import label_study
from reprolab.tuning.objective import make_objective
from reprolab.tuning.parent import spawned
from reprolab.tuning.pruners import make_pruner
from reprolab.tuning.storage import HEARTBEAT_S, heartbeat, open_storage, storage_url, study_lock

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
log = logging.getLogger(__name__)


@dataclass
class TuneResult:
    study: optuna.Study
    best_params: dict
    trials: list[dict]


def sampler_seed(seed: int, model: str, index: int = 0) -> int:
    """The seed of one model's sampler: from ``seed`` and the model's name, so each model's
    study draws its own candidates (reproducibly); ``index`` apart for parallel workers."""
    digest = hashlib.sha256(f"{seed}:{model}".encode()).digest()
    return (int.from_bytes(digest[:4], "big") + index) % 2**32


def trial_sampler(seed: int, claimed: int, tune: TuneParams) -> optuna.samplers.TPESampler:
    """The sampler of the next trial: TPE keeps no state but its random generator (it reads
    the history from the storage), so seeding it from the study's seed and the number of
    trials already claimed makes a killed and resumed study draw what an uninterrupted one
    draws (a killed trial is retried with its own params first)."""
    return optuna.samplers.TPESampler(
        seed=(seed + claimed) % 2**32, n_startup_trials=tune.sampler_startup_trials
    )


def open_study(name: str, seed: int, tune: TuneParams, storage: RDBStorage) -> optuna.Study:
    return optuna.create_study(
        study_name=name,
        storage=storage,
        direction="minimize",
        load_if_exists=True,
        sampler=trial_sampler(seed, 0, tune),
        pruner=make_pruner(tune),
    )


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


def model_context(params: Params, model: str) -> ModelContext:
    return get_task(params.task_of(model)).context(params, model)


def run_trial(
    study: optuna.Study,
    storage: RDBStorage,
    trial: optuna.Trial,
    objective: Callable[[optuna.Trial], float],
) -> None:
    """Optuna's ask-and-tell: a pruned trial is told PRUNED, an error FAIL and re-raised."""
    # Trial._trial_id is the storage id that heartbeats are recorded under.
    with heartbeat(storage, trial._trial_id):
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            return
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
    study.tell(trial, value)


def run_worker(
    ctx: ModelContext, tags: dict[str, str], index: int = 0, in_order: bool = False
) -> int:
    """Run trials of the model's study until ``tune.n_trials`` have finished, by this worker
    or any other; return how many this one ran. ``index`` offsets the sampler's seed, so
    workers started together do not draw the same random startup params. ``in_order``: the
    study's only worker (run_budget)."""
    p, tune = ctx.params, ctx.tune
    name = study_name(ctx)
    tracker = Tracker(ctx.dataset, ctx.name, name)
    storage = open_storage(storage_url(tune.storage), tracker)
    claim = study_lock(storage, name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with claim():  # one parent run and one study, however many workers start at once
        parent = tracker.parent_run_id(tags)
        seed = sampler_seed(p.seed, ctx.name, index)
        study = open_study(name, seed, tune, storage)
        label_study(study, ctx)  # for optuna-dashboard: what it is, its objective's name
    tracker.log(
        parent,
        params={
            **flatten("model", ctx.spec.model_dump(mode="json")),
            **flatten("tune", tune.model_dump(mode="json", exclude={"workers", "storage"})),
            "seed": p.seed,
            "study": name,
        },
    )
    objective = make_objective(ctx, tracker, parent, tags)
    return run_budget(study, storage, claim, seed, tune, objective, in_order)


def run_budget(
    study: optuna.Study,
    storage: RDBStorage,
    claim: Callable[[], contextlib.AbstractContextManager],
    seed: int,
    tune: TuneParams,
    objective: Callable[[optuna.Trial], float],
    in_order: bool = False,
) -> int:
    """Ask and run trials of ``study`` until ``tune.n_trials`` have finished, by this worker or
    any other sharing ``claim``; return how many this one ran.

    ``in_order`` (the study's only worker: the tune stage with ``tune.workers: 1``): a RUNNING
    trial met at the start is a killed worker's, whose retry must run before any new trial
    for the study to go on as an uninterrupted one would: wait until it is stale (the grace
    period, plus SQLite's one-second clock). Joining workers start at once."""
    with claim():
        stores.fail_dead_trials(study)  # a killed worker of this machine: retried at once
    running = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    if in_order and running:
        interval = storage.heartbeat_interval or HEARTBEAT_S
        time.sleep((storage.grace_period or 2 * interval) + 1)
    ran = 0
    while True:
        with claim():
            stores.fail_dead_trials(study)
            optuna.storages.fail_stale_trials(study)
            states = [t.state for t in study.get_trials(deepcopy=False)]
            finished = sum(s in FINISHED for s in states)
            claimed = finished + states.count(TrialState.RUNNING)
            if finished >= tune.n_trials:
                return ran
            if claimed < tune.n_trials:
                study.sampler = trial_sampler(seed, claimed, tune)
                trial = study.ask()
            else:
                trial = None
            if trial is not None:
                # A first heartbeat (a trial without one is never found stale), and this
                # worker's name before the lock is let go: a retry inherits its dead worker's.
                storage.record_heartbeat(trial._trial_id)
                trial.set_user_attr("worker", stores.worker_id())
        if trial is None:
            time.sleep(storage.heartbeat_interval or HEARTBEAT_S)  # in case one's worker dies
            continue
        run_trial(study, storage, trial, objective)
        ran += 1


def spawned_worker(params: Params, model: str, tags: dict[str, str], index: int) -> None:
    """A spawned worker's body (parent.spawned tied it to its stage first)."""
    run_worker(model_context(params, model), tags, index)


def tune_model(ctx: ModelContext, tags: dict[str, str]) -> TuneResult:
    """Run (or resume) the study until ``n_trials`` trials have finished, with
    ``tune.workers`` workers: this process and ``workers - 1`` spawned ones."""
    p, tune = ctx.params, ctx.tune
    if tune.n_trials <= tune.sampler_startup_trials and ctx.spec.budget.n_trials is None:
        log.warning(
            "warning: %s: tune.n_trials (%d) <= tune.sampler_startup_trials (%d): every trial "
            "is drawn at random (random search, TPE never runs)",
            ctx.name,
            tune.n_trials,
            tune.sampler_startup_trials,
        )
    spawn = multiprocessing.get_context("spawn")
    helpers = [
        spawn.Process(
            target=spawned,
            args=(os.getpid(), f"{__name__}:spawned_worker", pickle.dumps((p, ctx.name, tags, i))),
            daemon=True,
        )
        for i in range(1, tune.workers)
    ]
    for process in helpers:
        process.start()
    try:
        run_worker(ctx, tags, index=0, in_order=tune.workers == 1)
        for process in helpers:
            process.join()
    finally:
        for process in helpers:
            if process.is_alive():
                process.terminate()
                process.join()
    failed = [process.exitcode for process in helpers if process.exitcode != 0]
    if failed:
        raise TuningError(f"{len(failed)} tune worker(s) of {ctx.name} exited with {failed}")
    name = study_name(ctx)
    tracker = Tracker(ctx.dataset, ctx.name, name)
    study = optuna.load_study(
        study_name=name, storage=open_storage(storage_url(tune.storage), tracker)
    )
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise TuningError(
            f"study {name}: all {tune.n_trials} trials were pruned; widen tune.lr or raise "
            "tune.pruner.n_warmup_steps"
        )
    best = study.best_trial
    key = f"best_{get_task(ctx.task).objective}"
    # No trial number: a resumed study numbers the retry of a killed trial anew, and its
    # outputs must equal an uninterrupted one's (the number goes to MLflow).
    best_params = {
        "lr": best.params["lr"],
        "weight_decay": best.params["weight_decay"],
        key: best.value,
        "study": name,
    }
    parent = tracker.parent_run_id(tags)
    tracker.log(
        parent,
        metrics={key: best.value},
        params={
            "best.lr": best.params["lr"],
            "best.weight_decay": best.params["weight_decay"],
            "best.trial": best.number,
        },
    )
    tracker.end(parent)
    return TuneResult(study=study, best_params=best_params, trials=trials_table(study))


def trials_table(study: optuna.Study) -> list[dict]:
    rows = []
    # Numbered in order of the finished trials: a resumed study's retried trial has a new
    # Optuna number but the same place in the budget.
    for index, t in enumerate(sorted(finished_trials(study), key=lambda t: t.number)):
        rows.append(
            {
                "trial": index,
                "state": t.state.name,
                "value": t.value
                if t.value is not None
                else t.intermediate_values.get(max(t.intermediate_values, default=0), float("nan")),
                "lr": t.params["lr"],
                "weight_decay": t.params["weight_decay"],
                "epochs": len(t.intermediate_values),
            }
        )
    return rows
