"""Where studies live and how workers share them: the storage URL, the RDB storage with
heartbeats, the per-study claim lock and the heartbeat thread.

SQLite under the workspace root by default (a 60 s busy timeout instead of "database is
locked"), or any RDB URL from ``REPROLAB_OPTUNA_STORAGE`` or ``tune.storage`` (PostgreSQL for
workers on several machines). A trial whose worker died is failed by the heartbeat check and
retried with the same params (RetryHeartbeatStaleTrialCallback); its MLflow run ends FAILED.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from reprolab.core.io import file_lock
from reprolab.core.paths import workspace_root
from reprolab.core.stage import STORE_FAULTS
from reprolab.tracking.runs import Tracker

# Heartbeats and stale-trial retry are the documented resume pattern; optuna still flags
# them experimental, which says nothing a user of this pipeline can act on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# run_trial records heartbeats itself around ask-and-tell, which Study.optimize cannot do
# under the claim lock.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
HEARTBEAT_S = 5
_STORAGE_ADVICE = (
    "the Optuna storage (REPROLAB_OPTUNA_STORAGE, tune.storage, else .optuna/studies.db in "
    "the workspace) must be reachable and writable"
)
# A refused write (a read-only database file) surfaces as Optuna's StorageInternalError.
STORE_FAULTS.append((sqlalchemy.exc.SQLAlchemyError, _STORAGE_ADVICE))
STORE_FAULTS.append((optuna.exceptions.StorageInternalError, _STORAGE_ADVICE))


def storage_url(configured: str | None = None) -> str:
    """REPROLAB_OPTUNA_STORAGE, else ``tune.storage``, else SQLite under the workspace root."""
    url = os.environ.get("REPROLAB_OPTUNA_STORAGE") or configured
    if url:
        return url
    folder = workspace_root() / ".optuna"
    folder.mkdir(exist_ok=True)
    return f"sqlite:///{folder / 'studies.db'}"


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


def study_lock(storage: RDBStorage, name: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A lock that every worker of study ``name`` takes to claim a trial.

    PostgreSQL: a transaction-level advisory lock (machines share it; a dead worker's
    connection releases it). Other storages: an exclusive file lock beside an SQLite file,
    or under the workspace's ``.optuna/`` (processes of this machine only), one per storage.
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
    # One lock file per storage, not per study (claims take milliseconds, and files per
    # study would pile up): the one that guards the storage's schema.
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        path = Path(f"{database}.lock")
    else:
        path = workspace_root() / ".optuna" / "claims.lock"
    return lambda: file_lock(path)


@contextlib.contextmanager
def heartbeat(storage: RDBStorage, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat every heartbeat interval of the storage while the block
    runs."""
    stop = threading.Event()
    interval = storage.get_heartbeat_interval() or HEARTBEAT_S

    def beat() -> None:
        while not stop.wait(interval):
            storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def worker_id() -> str:
    """What a trial's ``worker`` attribute holds: fail_dead_trials checks the process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def fail_dead_trials(study: optuna.Study) -> int:
    """Under the study's claim lock: fail now the RUNNING trials whose worker is known dead,
    and retry them as the heartbeat check would after its grace period. Dead: a worker of
    this machine whose process is gone, or a trial without any heartbeat (workers ask for a
    trial and record its first heartbeat under the claim lock, so one without is a worker's
    killed in between: no heartbeat would ever make it stale). Returns how many."""
    storage = study._storage
    host, dead = socket.gethostname(), []
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    rdb = getattr(storage, "_backend", storage)  # a study wraps its RDBStorage in a cache
    beating = _with_heartbeat(rdb, [t._trial_id for t in running])
    for trial in running:
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        gone = worker_host == host and pid.isdigit() and not _alive(int(pid))
        if gone or trial._trial_id not in beating:
            dead.append(trial._trial_id)
    retry = storage.get_heartbeat_stale_trial_callback()
    for trial_id in dead:
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL) and retry:
                retry(study, copy.deepcopy(storage.get_trial(trial_id)))
    return len(dead)


def _with_heartbeat(storage: RDBStorage, trial_ids: list[int]) -> set[int]:
    """Which of ``trial_ids`` have a heartbeat recorded (Optuna's trial_heartbeats table)."""
    if not trial_ids:
        return set()
    query = sqlalchemy.text("SELECT trial_id FROM trial_heartbeats WHERE trial_id IN :ids")
    query = query.bindparams(sqlalchemy.bindparam("ids", expanding=True))
    with storage.engine.connect() as connection:
        return {row[0] for row in connection.execute(query, {"ids": trial_ids})}
