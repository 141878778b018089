"""MLflow wiring: one experiment per dataset, one parent run per model and study, a nested
run per Optuna trial, the final model logged and registered. The parent run is found again by
its tags, so the tune, train and evaluate stages (separate processes) all log into it without
any run id in a DVC-tracked file."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from reprolab.core import numerics
from reprolab.core.io import file_lock, md5_file
from reprolab.core.paths import workspace_root
from reprolab.core.schema import Params
from reprolab.core.stage import FAILURE_HOOKS, STORE_FAULTS
from reprolab.tracking.lineage import MD5_TAG, PATH_TAG, code_diff, log_code_diff, log_inputs
from reprolab.tracking.pages import KIND, KIND_TAG
from reprolab.tracking.store import artifact_root, repair_moved_store

TAG_MODEL = "reprolab.model"
TAG_STUDY = "reprolab.study"
TAG_ROLE = "reprolab.role"


# Set by `reprolab verify` for the stages it reruns: their runs go to a separate experiment
# and register no model version (the registry and its aliases are the workspace's).
VERIFY_ENV = "REPROLAB_VERIFY"


def verifying() -> bool:
    return os.environ.get(VERIFY_ENV) == "1"


def experiment_name(dataset: str) -> str:
    return f"reprolab-{dataset}" + ("-verify" if verifying() else "")


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else an absolute SQLite store in the workspace root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workspace_root() / 'mlflow.db'}"


def open_store() -> str:
    """Point MLflow at ``tracking_uri()``; a SQLite store copied or moved with its workspace
    is first repaired to keep its artifacts beside it (store.repair_moved_store)."""
    uri = tracking_uri()
    repair_moved_store(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def store_lock() -> contextlib.AbstractContextManager:
    """Between this machine's processes using the SQLite store (a no-op for other stores)."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return file_lock(uri.removeprefix("sqlite:///") + ".lock")
    return contextlib.nullcontext()


def workspace_id() -> str:
    """Where a result is made: this host and the workspace folder (a model version's tag)."""
    return f"{socket.gethostname()}:{workspace_root()}"


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def parent_run_name(model: str, study: str, tags: Mapping[str, str]) -> str:
    """The name the MLflow UI shows for a model's parent run, so reruns and experiments tell
    apart: ``<model>@<experiment>`` under `dvc exp run` (DVC sets DVC_EXP_NAME, also for temp
    and queued runs), else ``<model>@<short commit>``, with ``-dirty`` when code or config
    differ from it (lineage.code_diff, read once per process anyway), else outside git
    ``<model>@<study fingerprint>``. It lives in MLflow only, never in a DVC output."""
    experiment = os.environ.get("DVC_EXP_NAME")
    if experiment:
        return f"{model}@{experiment}"
    sha = tags.get("reprolab.git_sha") or git_sha()
    if sha == "unknown":
        return f"{model}@{study.rsplit('.', 1)[-1][:12]}"
    return f"{model}@{sha[:7]}" + ("-dirty" if code_diff() else "")


class Tracker:
    """The MLflow side of one model in one stage."""

    def __init__(self, dataset: str, model: str, study: str) -> None:
        self.dataset, self.model, self.study = dataset, model, study
        # Processes that open a new SQLite store together race to create its tables
        # ("table ... already exists"): parallel tune workers, queued experiments.
        with store_lock():
            self.uri = open_store()
            self.client = MlflowClient()
            self.experiment_id = self._experiment(experiment_name(dataset))

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if KIND_TAG not in found.tags:  # made before the tag: opens on its runs from now
                self.client.set_experiment_tag(found.experiment_id, KIND_TAG, KIND)
            return found.experiment_id
        root = artifact_root(self.uri)
        location = None if root is None else (root / name).as_uri()
        try:
            # Tagged so that MLflow 3's UI opens it on its runs, not on GenAI traces.
            return self.client.create_experiment(
                name, artifact_location=location, tags={KIND_TAG: KIND}
            )
        except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel stage
            return self.client.get_experiment_by_name(name).experiment_id

    def parent_run_id(self, tags: Mapping[str, str]) -> str:
        """The model's parent run for this study: found by tags, or created."""
        runs = self.client.search_runs(
            [self.experiment_id],
            _parent_query(self.model, self.study),
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        if runs:
            run_id = runs[0].info.run_id
        else:
            run = self.client.create_run(
                self.experiment_id,
                run_name=parent_run_name(self.model, self.study, tags),
                tags={TAG_MODEL: self.model, TAG_STUDY: self.study, TAG_ROLE: "model"},
            )
            run_id = run.info.run_id
        _OPEN[run_id] = self
        self.set_tags(run_id, tags)
        log_inputs(self.client, run_id, self.dataset, tags)
        log_code_diff(self.client, run_id)
        return run_id

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """All in one batched call (a stage sets about twenty)."""
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def start_child(self, parent_id: str, name: str, tags: Mapping[str, str]) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={
                MLFLOW_PARENT_RUN_ID: parent_id,
                MLFLOW_RUN_NAME: name,
                TAG_MODEL: self.model,
                TAG_STUDY: self.study,
                TAG_ROLE: "trial",
                **tags,
            },
        )
        log_inputs(self.client, run.info.run_id, self.dataset, tags)
        _OPEN[run.info.run_id] = self
        return run.info.run_id

    def log(
        self,
        run_id: str,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, Any] | None = None,
        step: int = 0,
    ) -> None:
        """One batched call: metrics at ``step`` and params (retried if another workspace
        inserted one of the params of a shared run at the same moment: it finds it then)."""
        now = int(time.time() * 1000)
        for attempt in range(3):
            try:
                return self.client.log_batch(
                    run_id,
                    metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items()],
                    params=[Param(k, str(v)) for k, v in (params or {}).items()],
                )
            except mlflow.exceptions.MlflowException as err:  # params go in before metrics
                if attempt == 2 or not re.search(r"duplicate key|UNIQUE constraint", str(err)):
                    raise
                time.sleep(0.1)

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def is_active(self, run_id: str) -> bool:
        return self.client.get_run(run_id).info.status == RunStatus.to_string(RunStatus.RUNNING)


def log_test_metrics(
    dataset: str, model: str, study: str, tags: Mapping[str, str], metrics: Mapping[str, float]
) -> None:
    """The one test evaluation's metrics, as ``test_<name>``, on the model's parent run, which
    this ends (the last stage to log into it)."""
    tracker = Tracker(dataset, model, study)
    parent = tracker.parent_run_id(tags)
    tracker.log(parent, metrics={f"test_{k}": v for k, v in metrics.items()})
    tracker.end(parent)


# Runs this process created or logged into; a failing stage ends those still RUNNING.
_OPEN: dict[str, Tracker] = {}


def end_open_runs(status: str, reason: str) -> None:
    """End every run of this process that is still RUNNING, with the reason as a tag."""
    for run_id, tracker in list(_OPEN.items()):
        if tracker.is_active(run_id):
            tracker.set_tags(run_id, {"reprolab.failure": reason[:5000]})
            tracker.end(run_id, status)
    _OPEN.clear()


FAILURE_HOOKS.append(end_open_runs)
# MLflow's SQL store logs a database error with its whole traceback before raising it as an
# MlflowException, which the stage reports in one line (its root cause and what to fix).
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
STORE_FAULTS.append(
    (
        mlflow.exceptions.MlflowException,
        "the MLflow store (MLFLOW_TRACKING_URI, else mlflow.db and mlartifacts/ in the "
        "workspace) must be reachable and writable",
    )
)


def _parent_query(model: str, study: str) -> str:
    return (
        f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_ROLE}` = 'model'"
        f" and tags.`{TAG_MODEL}` = '{model}'"
    )


def parent_run(dataset: str, model: str, study: str) -> mlflow.entities.Run | None:
    """A model's parent run for its study; None when this store never saw that run."""
    open_store()
    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name(dataset))
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        _parent_query(model, study),
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0] if runs else None


def logged_metrics(dataset: str, model: str, study: str) -> dict[str, float]:
    """The metrics of a model's parent run; empty when this store never saw that run."""
    run = parent_run(dataset, model, study)
    return dict(run.data.metrics) if run else {}


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'prefix.a.b': 1}, for logging nested params."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), sub))
        return out
    return {prefix: value}


def stage_tags(
    device: str, params: Params, data: Iterable[tuple[str, str, str]] = ()
) -> dict[str, str]:
    """Tags of every run a stage logs: git sha, device, threads, the numerics in force
    (core.numerics: mode, torch build, CPU capability), the md5 of the dvc.lock it ran under,
    and for each split read (split, path, md5) its md5 and path (lineage.dataset_inputs)."""
    sha = git_sha()
    tags = {
        "mlflow.source.git.commit": sha,
        "reprolab.git_sha": sha,
        "reprolab.device": device,
        "reprolab.threads": str(params.threads),
        **{f"reprolab.{k}": v for k, v in numerics.describe(params.numerics).items()},
    }
    lock = Path("dvc.lock")
    if lock.is_file():
        tags["reprolab.dvc_lock_md5"] = md5_file(lock)
    for split, path, md5 in data:
        tags[f"{MD5_TAG}{split}"] = md5
        tags[f"{PATH_TAG}{split}"] = path
    return tags
