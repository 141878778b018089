"""MLflow wiring: one experiment per dataset; per model and study a parent run that groups
the model's runs, and under it a run per stage execution (tune, train, evaluate: each rerun
its own run, so the UI compares them; a Ctrl-C or SIGTERM ends it KILLED), a tune run's
trials nested under it. The parent run is found again by its tags, so the stages (separate
processes) all group under it without any run id in a DVC-tracked file; it shows each
execution's summary figures (step = the execution's number) and its latest status."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from reprolab.core.paths import stage_name
from reprolab.core.stage import FAILURE_HOOKS, STORE_FAULTS
from reprolab.tracking.lineage import log_code_diff, log_inputs
from reprolab.tracking.pages import KIND, KIND_TAG
from reprolab.tracking.store import (
    artifact_root,
    open_store,
    retrying_duplicates,
    store_lock,
)
from reprolab.tracking.tags import parent_run_name

TAG_MODEL = "reprolab.model"
TAG_STUDY = "reprolab.study"
TAG_ROLE = "reprolab.role"
TAG_STAGE = "reprolab.stage"  # an execution's dvc.yaml stage (train@mlp) or command
TAG_PROCESS = "reprolab.process"  # an execution's host:pid (a SIGKILLed one is ended later)


# Set by `reprolab verify` for the stages it reruns: their runs go to a separate experiment
# and register no model version (the registry and its aliases are the workspace's).
VERIFY_ENV = "REPROLAB_VERIFY"


def verifying() -> bool:
    return os.environ.get(VERIFY_ENV) == "1"


def experiment_name(dataset: str) -> str:
    return f"reprolab-{dataset}" + ("-verify" if verifying() else "")


class Tracker:
    """The MLflow side of one model (``role`` model) or baseline (``role`` baseline) in one
    process; after ``start_execution``, ``run_id`` is this execution's run, ``parent`` the
    group's."""

    def __init__(self, dataset: str, model: str, study: str, role: str = "model") -> None:
        self.dataset, self.model, self.study, self.role = dataset, model, study, role
        self.run_id = self.parent = ""
        self.number = 0
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
            _parent_query(self.model, self.study, self.role),
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        if runs:
            run_id = runs[0].info.run_id
        else:
            model = {TAG_MODEL: self.model, TAG_STUDY: self.study, TAG_ROLE: self.role}
            run = self.client.create_run(
                self.experiment_id,
                run_name=f"baseline {self.model}"
                if self.role == "baseline"
                else parent_run_name(self.model, self.study, tags),
                tags=model,
            )
            run_id = run.info.run_id
        _OPEN[run_id] = self
        self.set_tags(run_id, tags)
        log_inputs(self.client, run_id, self.dataset, tags)
        log_code_diff(self.client, run_id)
        return run_id

    def start_execution(self, stage: str, tags: Mapping[str, str]) -> str:
        """A new run for this execution of ``stage``, nested under the parent run (created if
        new, and RUNNING again while an execution runs), named ``<stage> #<n>``: the n-th
        execution of that stage in this group."""
        self.parent = self.parent_run_id(tags)
        self.client.update_run(self.parent, status="RUNNING")
        earlier = self.client.search_runs(
            [self.experiment_id],
            f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent}' and tags.`{TAG_STAGE}` = '{stage}'",
            max_results=10000,
        )
        for run in earlier:  # an execution left RUNNING by a process that no longer exists
            if run.info.status == "RUNNING" and _gone(run.data.tags.get(TAG_PROCESS, "")):
                self.set_tags(run.info.run_id, {"reprolab.failure": "its process was killed"})
                self.end(run.info.run_id, "KILLED")
        self.number = len(earlier) + 1
        process = f"{socket.gethostname()}:{os.getpid()}"
        self.run_id = self.start_child(
            self.parent,
            f"{stage} #{self.number}",
            {**tags, TAG_STAGE: stage, TAG_PROCESS: process},
            "execution",
        )
        return self.run_id

    def finish_execution(
        self, summary: Mapping[str, float] | None = None, status: str = "FINISHED"
    ) -> None:
        """End this execution's run; the parent shows ``summary`` at step = the execution's
        number (its history: a point per execution) and takes the execution's status."""
        if summary:
            self.log(self.parent, metrics=summary, step=self.number)
        self.end(self.run_id, status)
        self.end(self.parent, status)
        _EXECUTIONS.pop((self.dataset, self.model, self.study), None)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """All in one batched call (a stage sets about twenty; retried as ``log``)."""
        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        retrying_duplicates(lambda: self.client.log_batch(run_id, tags=batch))

    def start_child(
        self, parent_id: str, name: str, tags: Mapping[str, str], role: str = "trial"
    ) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={
                MLFLOW_PARENT_RUN_ID: parent_id,
                MLFLOW_RUN_NAME: name,
                TAG_MODEL: self.model,
                TAG_STUDY: self.study,
                TAG_ROLE: role,
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
        metrics_ = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items()]
        params_ = [Param(k, str(v)) for k, v in (params or {}).items()]
        retrying_duplicates(lambda: self.client.log_batch(run_id, metrics=metrics_, params=params_))

    def log_group_params(self, params: Mapping[str, Any]) -> None:
        """``params`` on this execution's run and on its parent (the group's: every execution
        logs the same values there)."""
        for run_id in (self.run_id, self.parent):
            self.log(run_id, params=params)

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def is_active(self, run_id: str) -> bool:
        return self.client.get_run(run_id).info.status == RunStatus.to_string(RunStatus.RUNNING)


def execution(dataset: str, model: str, study: str, stage: str, tags: Mapping[str, str]) -> Tracker:
    """This process's execution of ``stage`` for the model's study: started (its run created)
    on the first call, which a stage makes before its work, so that a Ctrl-C or SIGTERM ends
    it KILLED; the same tracker on later calls, until it is finished."""
    key = (dataset, model, study)
    if key not in _EXECUTIONS:
        tracker = Tracker(dataset, model, study)
        tracker.start_execution(stage, tags)
        _EXECUTIONS[key] = tracker
    return _EXECUTIONS[key]


def stage_execution(ctx: Any, step: str, study: str, tags: Mapping[str, str]) -> Tracker:
    """``execution`` of dvc.yaml's ``step`` stage (tune, train, evaluate) of ``ctx``'s model."""
    return execution(ctx.dataset, ctx.name, study, stage_name(step, ctx.group, ctx.name), tags)


def log_test_metrics(tracker: Tracker, metrics: Mapping[str, float]) -> None:
    """The one test evaluation's metrics, as ``test_<name>``, on the evaluate execution's run
    and its parent's summary; ends the execution."""
    logged = {f"test_{k}": v for k, v in metrics.items()}
    tracker.log(tracker.run_id, metrics=logged)
    tracker.finish_execution(logged)


# Runs this process created or logged into; a failing stage ends those still RUNNING.
_OPEN: dict[str, Tracker] = {}
# The executions this process started, by (dataset, model, study), until finished.
_EXECUTIONS: dict[tuple[str, str, str], Tracker] = {}


def end_open_runs(status: str, reason: str) -> None:
    """End every run of this process that is still RUNNING, with the reason as a tag."""
    for run_id, tracker in list(_OPEN.items()):
        if tracker.is_active(run_id):
            tracker.set_tags(run_id, {"reprolab.failure": reason[:5000]})
            tracker.end(run_id, status)
    _OPEN.clear()
    _EXECUTIONS.clear()


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


def _gone(process: str) -> bool:
    """``host:pid`` names a process of this host that has ended (SIGKILL cannot be caught)."""
    host, _, pid = process.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's (a shared server): it may well be running
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process of that pid
        return False
    return False


def _parent_query(model: str, study: str, role: str = "model") -> str:
    return (
        f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_ROLE}` = '{role}'"
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
