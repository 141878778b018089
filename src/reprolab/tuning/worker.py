"""Optuna tuning of learning rate and weight decay on the validation split.

Storage and locks, study name, batches, objective and pruners have their own modules. The
``tune`` stage runs ``tune.workers`` workers; ``reprolab tune-worker`` adds more. The budget
is ``n_trials`` slots, each claimed under the study's lock and finished once, across resumes
and workers (MaxTrialsCallback overshoots). Slots go in batches of ``tune.batch`` whose
trials see only earlier batches, so the study's trials are the same with any number of
workers (tuning/batches.py). A dead worker's trial is failed (at once on this machine, else
by the heartbeat check) and retried in its slot with the same params.
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
from reprolab.core.paths import stage_name
from reprolab.core.schema import Params, TuneParams
from reprolab.learn.context import ModelContext
from reprolab.learn.tasks import get_task
from reprolab.tracking.runs import Tracker
from reprolab.tracking.tags import flatten
from reprolab.tuning import batches
from reprolab.tuning import storage as stores
from reprolab.tuning.identity import study_name
from reprolab.tuning.labels import label_study
from reprolab.tuning.objective import make_objective
from reprolab.tuning.parent import spawned
from reprolab.tuning.pruners import make_pruner
from reprolab.tuning.storage import heartbeat, open_storage, storage_url, study_lock

FINISHED = batches.FINISHED
POLL_S = 0.1  # how often a waiting worker asks again for a slot
log = logging.getLogger(__name__)


@dataclass
class TuneResult:
    study: optuna.Study
    best_params: dict
    trials: list[dict]


def sampler_seed(seed: int, model: str) -> int:
    """The seed of one model's study: from ``seed`` and the model's name, so each model's
    study draws its own candidates (reproducibly). Slot k's sampler is seeded with it + k."""
    digest = hashlib.sha256(f"{seed}:{model}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def open_study(name: str, seed: int, tune: TuneParams, storage: RDBStorage) -> optuna.Study:
    return optuna.create_study(
        study_name=name,
        storage=storage,
        direction="minimize",
        load_if_exists=True,
        sampler=batches.trial_sampler(seed, 0, tune),
        pruner=make_pruner(tune, seed),
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


def start_tuning(ctx: ModelContext, stage: str, tags: dict[str, str]) -> Tracker:
    """This tune execution's MLflow run (of the stage, or of `reprolab tune-worker`), nested
    under the model's parent run: made under the study's lock (one parent run however many
    workers start at once), with the model's and tuning's params, on the parent too."""
    name = study_name(ctx)
    tracker = Tracker(ctx.dataset, ctx.name, name)
    with study_lock(open_storage(storage_url(ctx.tune.storage), tracker), name)():
        tracker.start_execution(stage, tags)
    config = {
        **flatten("model", ctx.spec.model_dump(mode="json")),
        **flatten("tune", ctx.tune.model_dump(mode="json", exclude={"workers", "storage"})),
        "seed": ctx.params.seed,
        "study": name,
    }
    tracker.log_group_params(config)
    return tracker


def run_worker(ctx: ModelContext, tracker: Tracker, tags: dict[str, str]) -> int:
    """Run trials of the model's study until ``tune.n_trials`` have finished, by this worker
    or any other; return how many this one ran. Every worker computes the same trials
    (tuning/batches.py): which worker runs a slot changes nothing. Each trial's MLflow run
    nests under ``tracker.run_id``, the tune execution's run."""
    p, tune = ctx.params, ctx.tune
    name = study_name(ctx)
    storage = open_storage(storage_url(tune.storage), tracker)
    claim = study_lock(storage, name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with claim():  # one study, however many workers start at once
        seed = sampler_seed(p.seed, ctx.name)
        study = open_study(name, seed, tune, storage)
        label_study(study, ctx)  # for optuna-dashboard: what it is, its objective's name
    objective = make_objective(ctx, tracker, tags)
    return run_budget(study, storage, claim, seed, tune, objective)


def run_budget(
    study: optuna.Study,
    storage: RDBStorage,
    claim: Callable[[], contextlib.AbstractContextManager],
    seed: int,
    tune: TuneParams,
    objective: Callable[[optuna.Trial], float],
) -> int:
    """Claim and run slots of ``study`` until all ``tune.n_trials`` have finished, by this
    worker or any other sharing ``claim``; return how many this one ran. A slot is claimed
    only once the batches before it have finished (batches.next_slot): until then, and while
    every open slot is running, the worker waits. A killed trial (this machine's, at once;
    another's, once its heartbeat is stale) is retried in its own slot with its own params."""
    ran = 0
    while True:
        with claim():
            stores.fail_dead_trials(study)
            optuna.storages.fail_stale_trials(study)
            slot = batches.next_slot(study.get_trials(deepcopy=False), tune.n_trials, tune.batch)
            if slot == batches.DONE:
                return ran
            if slot is not None:
                study.sampler = batches.trial_sampler(seed, slot, tune)
                trial = study.ask()
                if batches.SLOT not in trial.user_attrs:  # a retry keeps its slot
                    trial.set_user_attr(batches.SLOT, slot)
                # A first heartbeat (a trial without one is never found stale), and this
                # worker's name before the lock is let go: a retry inherits its dead worker's.
                storage.record_heartbeat(trial._trial_id)
                trial.set_user_attr("worker", stores.worker_id())
        if slot is None:
            time.sleep(POLL_S)
            continue
        run_trial(study, storage, trial, objective)
        ran += 1


def spawned_worker(params: Params, model: str, tags: dict[str, str], run_id: str) -> None:
    """A spawned worker's body (parent.spawned tied it to its stage first): its trials nest
    under the stage's tune run ``run_id``."""
    ctx = model_context(params, model)
    tracker = Tracker(ctx.dataset, ctx.name, study_name(ctx))
    tracker.run_id = run_id
    run_worker(ctx, tracker, tags)


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
    if tune.workers > tune.batch:
        log.warning(
            "warning: %s: tune.workers (%d) > tune.batch (%d): a batch's trials are all a "
            "batch can run at once, so %d worker(s) will wait; raise tune.batch",
            ctx.name,
            tune.workers,
            tune.batch,
            tune.workers - tune.batch,
        )
    tracker = start_tuning(ctx, stage_name("tune", ctx.group, ctx.name), tags)
    payload = pickle.dumps((p, ctx.name, tags, tracker.run_id))
    spawn = multiprocessing.get_context("spawn")
    helpers = [
        spawn.Process(
            target=spawned,
            args=(os.getpid(), f"{__name__}:spawned_worker", payload),
            daemon=True,
        )
        for _ in range(1, tune.workers)
    ]
    for process in helpers:
        process.start()
    try:
        run_worker(ctx, tracker, tags)
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
    study = optuna.load_study(
        study_name=name, storage=open_storage(storage_url(tune.storage), tracker)
    )
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise TuningError(
            f"study {name}: all {tune.n_trials} trials were pruned; widen tune.lr or raise "
            "tune.pruner.n_warmup_steps"
        )
    # The least value, ties to the lower slot (Optuna's best_trial breaks ties by number).
    best = min(complete, key=lambda t: (t.value, batches.slot_of(t)))
    key = f"best_{get_task(ctx.task).objective}"
    # No trial number: a resumed study numbers the retry of a killed trial anew, and its
    # outputs must equal an uninterrupted one's (the number goes to MLflow).
    best_params = {
        "lr": best.params["lr"],
        "weight_decay": best.params["weight_decay"],
        key: best.value,
        "study": name,
    }
    chosen = {"best.lr": best.params["lr"], "best.weight_decay": best.params["weight_decay"]}
    tracker.log_group_params(chosen)
    tracker.log(tracker.run_id, metrics={key: best.value}, params={"best.trial": best.number})
    tracker.finish_execution({key: best.value})
    return TuneResult(study=study, best_params=best_params, trials=trials_table(study))


def trials_table(study: optuna.Study) -> list[dict]:
    rows = []
    # Numbered by slot: a resumed study's retried trial has a new Optuna number but the
    # same place in the budget, and parallel workers may finish a batch in any order.
    for t in sorted(finished_trials(study), key=batches.slot_of):
        rows.append(
            {
                "trial": batches.slot_of(t),
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
