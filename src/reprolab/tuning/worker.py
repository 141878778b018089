"""Optuna tuning of learning rate and weight decay on the validation split.

- Storage: an SQLite file under the workspace root (outside DVC outputs), or any RDB URL
  from ``REPROLAB_OPTUNA_STORAGE`` or ``tune.storage`` (PostgreSQL for workers on several
  machines).
- Study name: dataset, model and a fingerprint of everything the objective depends on
  (params it reads, split checksums, the package's code). A killed run resumes its study; a
  change of code, data or params starts a fresh one. Every worker of one checkout computes
  the same name, whatever its entry point.
- Workers: the ``tune`` stage runs ``tune.workers`` of them (itself and spawned processes);
  ``reprolab tune-worker <model>`` adds more, on this machine or others sharing the storage.
- Budget: finished trials (complete or pruned) count toward ``n_trials`` across resumes and
  workers. A worker asks for a trial only under the study's lock (a PostgreSQL advisory lock,
  else a file lock beside the storage) and only while running + finished trials are fewer
  than ``n_trials``, so parallel workers never overshoot (MaxTrialsCallback, checked after
  each worker's own trial, does). A trial whose worker died is failed by the heartbeat check
  and retried with the same params (RetryHeartbeatStaleTrialCallback); workers wait for
  running trials instead of leaving, so the budget is never left short either.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from reprolab.core.errors import DivergedError
from reprolab.core.io import file_lock
from reprolab.core.paths import workspace_root
from reprolab.core.schema import Params
from reprolab.learn.context import ModelContext
from reprolab.learn.engine import EpochCallback, fit, make_optimizer
from reprolab.tracking.runs import Tracker, flatten

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Heartbeats and stale-trial retry are the documented resume pattern; optuna still flags
# them experimental, which says nothing a user of this pipeline can act on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# run_trial records heartbeats itself around ask-and-tell, which Study.optimize cannot do
# under the claim lock.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
HEARTBEAT_S = 5
log = logging.getLogger(__name__)


def storage_url(configured: str | None = None) -> str:
    """REPROLAB_OPTUNA_STORAGE, else ``tune.storage``, else SQLite under the workspace root."""
    url = os.environ.get("REPROLAB_OPTUNA_STORAGE") or configured
    if url:
        return url
    folder = workspace_root() / ".optuna"
    folder.mkdir(exist_ok=True)
    return f"sqlite:///{folder / 'studies.db'}"


def code_fingerprint() -> str:
    """Hash of every module of the reprolab package: the same for the stage and for any
    worker of the same checkout (a fingerprint of the modules loaded would differ between
    entry points, and a worker would open another study)."""
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def study_name(ctx: ModelContext) -> str:
    p = ctx.params
    inputs = {
        "seed": p.seed,
        "dataset": ctx.dataset,
        "threads": p.threads,
        "device": ctx.device.type,
        # How many workers run it and where it is stored do not change what it finds.
        "tune": ctx.tune.model_dump(mode="json", exclude={"workers", "storage"}),
        "train": ctx.train.model_dump(
            mode="json",
            include={"patience", "scheduler", "step", "deterministic", "compile", "augment"},
        ),
        "model": ctx.spec.model_dump(mode="json"),
        "data": ctx.data_md5(("train", "val")),
        "code": code_fingerprint(),
    }
    if ctx.task == "generative":  # its objective lives in the scorer's features
        inputs["scorer"] = ctx.scorer_md5()
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    return f"{ctx.dataset}.{ctx.name}.{digest}"


@dataclass
class TuneResult:
    study: optuna.Study
    best_params: dict
    trials: list[dict]


class _FailAndRetry(RetryHeartbeatStaleTrialCallback):
    """A trial whose worker died: close its MLflow run as FAILED, then re-queue its params."""

    def __init__(self, tracker: Tracker) -> None:
        super().__init__(max_retry=2)
        self.tracker = tracker

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id and self.tracker.is_active(run_id):
            self.tracker.end(run_id, "FAILED")
        super().__call__(study, trial)


def open_storage(url: str, tracker: Tracker) -> RDBStorage:
    # SQLite: wait for the writer lock instead of failing with "database is locked".
    sqlite_wait = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    with _schema_lock(url):
        return RDBStorage(
            url,
            engine_kwargs=sqlite_wait,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=2 * HEARTBEAT_S,
            heartbeat_stale_trial_callback=_FailAndRetry(tracker),
        )


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """Workers that open a new storage together would race to create its tables."""
    if url.startswith("sqlite:///"):
        with file_lock(url.removeprefix("sqlite:///") + ".lock"):
            yield
    elif url.startswith("postgresql"):
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.begin() as connection:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"), {"k": 0})
                yield
        finally:
            engine.dispose()
    else:
        yield


def open_study(name: str, seed: int, tune_params, storage: RDBStorage) -> optuna.Study:
    return optuna.create_study(
        study_name=name,
        storage=storage,
        direction="minimize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=tune_params.sampler_startup_trials
        ),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=tune_params.pruner.n_startup_trials,
            n_warmup_steps=tune_params.pruner.n_warmup_steps,
        ),
    )


def study_lock(storage: RDBStorage, name: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A lock that every worker of study ``name`` takes to claim a trial.

    PostgreSQL: a transaction-level advisory lock (machines share it; a dead worker's
    connection releases it). Other storages: an exclusive file lock beside an SQLite file,
    or under the workspace's ``.optuna/`` (processes of this machine only).
    """
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    engine = storage.engine
    if engine.dialect.name == "postgresql":

        @contextlib.contextmanager
        def advisory() -> Iterator[None]:
            with engine.begin() as connection:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
                yield

        return advisory
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        path = Path(f"{database}.{name}.lock")
    else:
        path = workspace_root() / ".optuna" / f"{name}.lock"
    return lambda: file_lock(path)


@contextlib.contextmanager
def heartbeat(storage: RDBStorage, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat every HEARTBEAT_S while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# A trial's training: (lr, weight_decay, on_epoch, desc) -> (best objective, its epoch).
TrialFit = Callable[[float, float, EpochCallback, str], tuple[float, int]]


def trial_fitter(ctx: ModelContext) -> tuple[TrialFit, str]:
    """How a trial of ``ctx``'s model trains, and the per-epoch value it minimises:
    engine.fit and ``val_loss``, or (a generator) reprolab.learn.tasks.generation's GAN loop and
    ``val_fid``."""
    if ctx.task == "generative":
        from reprolab.learn.tasks.generation import gan_trial_fitter

        return gan_trial_fitter(ctx), "val_fid"
    train, val = ctx.load("train"), ctx.load("val")

    def fit_trial(
        lr: float, weight_decay: float, on_epoch: EpochCallback, desc: str
    ) -> tuple[float, int]:
        model = ctx.new_model()
        result = fit(
            model,
            train,
            val,
            optimizer=make_optimizer(model, ctx.spec, lr, weight_decay),
            train_params=ctx.train,
            epochs=ctx.tune.epochs,
            batch_size=ctx.spec.batch_size,
            seed=ctx.params.seed,
            task=ctx.task,
            on_epoch=on_epoch,
            desc=desc,
        )
        return result.best_val_loss, result.best_epoch

    return fit_trial, "val_loss"


def model_context(params: Params, model: str) -> ModelContext:
    if params.task_of(model) == "generative":
        from reprolab.learn.tasks.generation import GanContext

        return GanContext(params, model)
    return ModelContext(params, model)


def make_objective(
    ctx: ModelContext, tracker: Tracker, parent: str, tags: dict[str, str]
) -> Callable[[optuna.Trial], float]:
    tune = ctx.tune
    fit_trial, key = trial_fitter(ctx)

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", tune.lr.low, tune.lr.high, log=True)
        weight_decay = trial.suggest_float(
            "weight_decay", tune.weight_decay.low, tune.weight_decay.high, log=True
        )
        run_id = tracker.start_child(parent, f"trial-{trial.number}", tags)
        trial.set_user_attr("mlflow_run_id", run_id)
        trial.set_user_attr("worker", worker_id())
        tracker.log(run_id, params={"lr": lr, "weight_decay": weight_decay, "trial": trial.number})

        def report(epoch: int, row: dict[str, float]) -> None:
            tracker.log(run_id, metrics={k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            trial.report(row[key], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"{key} {row[key]:.4f} at epoch {epoch}")

        try:
            best_value, best_epoch = fit_trial(lr, weight_decay, report, f"trial {trial.number}")
        except (optuna.TrialPruned, DivergedError) as stopped:
            reason = str(stopped)
            trial.set_user_attr("pruned_reason", reason)
            tracker.client.set_tag(run_id, "reprolab.pruned_reason", reason)
            tracker.end(run_id, "KILLED")
            log.warning("%s trial %d pruned: %s", ctx.name, trial.number, reason)
            raise optuna.TrialPruned(reason) from None
        except BaseException:
            tracker.end(run_id, "FAILED")
            raise
        trial.set_user_attr("best_epoch", best_epoch)
        tracker.log(run_id, metrics={f"best_{key}": best_value})
        tracker.end(run_id, "FINISHED")
        return best_value

    return objective


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


def run_worker(ctx: ModelContext, tags: dict[str, str], index: int = 0) -> int:
    """Run trials of the model's study until ``tune.n_trials`` have finished, by this worker
    or any other; return how many this one ran. ``index`` offsets the sampler's seed, so
    workers started together do not draw the same random startup params."""
    p, tune = ctx.params, ctx.tune
    name = study_name(ctx)
    tracker = Tracker(ctx.dataset, ctx.name, name)
    storage = open_storage(storage_url(tune.storage), tracker)
    claim = study_lock(storage, name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with claim():  # one parent run and one study, however many workers start at once
        parent = tracker.parent_run_id(tags)
        study = open_study(name, p.seed + index, tune, storage)
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
    ran = 0
    while True:
        with claim():
            optuna.storages.fail_stale_trials(study)
            states = [t.state for t in study.get_trials(deepcopy=False)]
            finished = sum(s in FINISHED for s in states)
            claimed = finished + states.count(TrialState.RUNNING)
            if finished >= tune.n_trials:
                return ran
            trial = study.ask() if claimed < tune.n_trials else None
            if trial is not None:
                # A trial without any heartbeat is never found stale: record one now.
                storage.record_heartbeat(trial._trial_id)
        if trial is None:
            # The budget is claimed by running trials; wait in case one's worker dies.
            time.sleep(HEARTBEAT_S)
            continue
        run_trial(study, storage, trial, objective)
        ran += 1


def _spawned_worker(params: Params, model: str, tags: dict[str, str], index: int) -> None:
    run_worker(model_context(params, model), tags, index)


def tune_model(ctx: ModelContext, tags: dict[str, str]) -> TuneResult:
    """Run (or resume) the study until ``n_trials`` trials have finished, with
    ``tune.workers`` workers: this process and ``workers - 1`` spawned ones."""
    p, tune = ctx.params, ctx.tune
    spawn = multiprocessing.get_context("spawn")
    helpers = [
        spawn.Process(target=_spawned_worker, args=(p, ctx.name, tags, index), daemon=True)
        for index in range(1, tune.workers)
    ]
    for process in helpers:
        process.start()
    try:
        run_worker(ctx, tags, index=0)
        for process in helpers:
            process.join()
    finally:
        for process in helpers:
            if process.is_alive():
                process.terminate()
                process.join()
    failed = [process.exitcode for process in helpers if process.exitcode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} tune worker(s) of {ctx.name} exited with {failed}")
    name = study_name(ctx)
    tracker = Tracker(ctx.dataset, ctx.name, name)
    study = optuna.load_study(
        study_name=name, storage=open_storage(storage_url(tune.storage), tracker)
    )
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(
            f"study {name}: all {tune.n_trials} trials were pruned; widen tune.lr or raise "
            "tune.pruner.n_warmup_steps"
        )
    best = study.best_trial
    key = "best_val_fid" if ctx.task == "generative" else "best_val_loss"
    best_params = {
        "lr": best.params["lr"],
        "weight_decay": best.params["weight_decay"],
        "best_trial": best.number,
        key: best.value,
        "study": name,
    }
    parent = tracker.parent_run_id(tags)
    tracker.log(
        parent,
        metrics={key: best.value},
        params={"best.lr": best.params["lr"], "best.weight_decay": best.params["weight_decay"]},
    )
    tracker.end(parent)
    return TuneResult(study=study, best_params=best_params, trials=trials_table(study))


def trials_table(study: optuna.Study) -> list[dict]:
    rows = []
    for t in sorted(finished_trials(study), key=lambda t: t.number):
        rows.append(
            {
                "trial": t.number,
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
