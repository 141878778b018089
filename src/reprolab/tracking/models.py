"""The MLflow model registry: the final model logged with its signature, one registered
model per dataset and model (``<dataset>-<model>``), versions tagged with what made them
(the ``champion`` alias: tracking.champion)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from reprolab.core.paths import MODEL_FILE, SPEC_FILE
from reprolab.tracking.lineage import code_diff
from reprolab.tracking.runs import stage_execution, verifying
from reprolab.tracking.store import store_lock
from reprolab.tracking.tags import workspace_id

# On a train run and its parent: the registered version (``models:/<name>/<version>``) its
# weights are, whether this run registered it or an earlier run with the same weights did.
VERSION_TAG = "reprolab.model_version"


@dataclass(frozen=True)
class FromCode:
    """A served model that is an MLflow pyfunc from code: ``code`` the file MLflow runs to
    serve it (it calls ``mlflow.models.set_model``), ``output`` its answer to the example
    (the signature's output). Its artifacts are the model folder's model.pt + model.json."""

    code: Path
    output: Any


def registered_name(dataset: str, model: str) -> str:
    return f"{dataset}-{model}"


def params_hash(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def log_final_model(
    ctx: Any,
    best: dict,
    tags: dict[str, str],
    *,
    history: list[dict],
    logged: dict[str, float],
    served: Any,  # FromCode, or an nn.Module (pytorch flavour, pickled: a generator's)
    example,
    about: dict,
    weights_md5: str,
    params: dict | None = None,
    version_tags: dict[str, str] | None = None,
    folder: Path | None = None,
) -> None:
    """On the train execution's run (the stage started it; else it starts here): the final
    epochs (``final.*``), the final metrics (the parent's summary too), and the served
    model logged with signature and registered as ``<dataset>-<model>``, its version
    tagged with git sha, data md5s, params hash, device and the weights' md5.

    Weights the registry already holds (a version of that name tagged with the same
    ``weights_md5``: a rerun that trained the same model) are neither logged nor registered
    again; the run is tagged with that version (``reprolab.model_version``, as a new one is).

    ``folder`` (the DVC model folder): its model.pt + model.json travel with the logged model
    (a FromCode pyfunc's ``artifacts/``, a module's ``extra_files/``), so `reprolab predict`
    rebuilds the network from them (weights_only) and never loads what `mlflow models serve`
    runs."""
    tracker = stage_execution(ctx, "train", best["study"], tags)
    run = tracker.run_id
    for row in history:
        tracker.log(
            run,
            metrics={f"final.{k}": v for k, v in row.items() if k != "epoch"},
            step=int(row["epoch"]),
        )
    tracker.log(run, metrics=logged, params=params)
    if verifying():  # logged for comparison, never registered (the registry is the workspace's)
        _log_model(run, served, example, None, about, params, folder)
        tracker.finish_execution(logged)
        return
    name = registered_name(ctx.dataset, ctx.name)
    # Looked up and registered under the store's lock, so that two runs training the same
    # weights at once (queued experiments) register one version between them; a tracking
    # server has no such lock, and _register keeps one version there.
    with store_lock():
        version = registered_version(tracker.client, name, weights_md5)
        if version is None:
            info = _log_model(run, served, example, None, about, params, folder)
            all_tags = {
                "git_sha": tags.get("reprolab.git_sha", "unknown"),
                "data_md5": ",".join(f"{k}={v}" for k, v in tags.items() if "data_md5" in k),
                "params_hash": params_hash({"model": ctx.spec.model_dump(mode="json"), **best}),
                "device": ctx.device.type,
                "weights_md5": weights_md5,
                "group": ctx.group,  # the params group whose champion it can be
                # Where and from what the result was made (tracking.champion reads them).
                "workspace": workspace_id(),
                "git_dirty": "true" if code_diff() else "false",
                **(version_tags or {}),
            }
            version = _register(tracker.client, info.model_uri, name, all_tags)
    for run_id in (run, tracker.parent):
        tracker.set_tags(run_id, {VERSION_TAG: f"models:/{name}/{version}"})
    tracker.finish_execution(logged)


def _register(client: MlflowClient, model_uri: str, name: str, tags: dict[str, str]) -> str:
    """A new version of ``name`` for the logged model ``model_uri``, created with its tags in
    one call; returns the version that holds these weights. Workspaces sharing a tracking
    server that train the same weights at once (no lock spans them) both register: the older
    version wins, and the newer, which finds it (versions are numbered in the order they are
    stored), is deleted, so the registry keeps one version per weights."""
    created = str(mlflow.register_model(model_uri, name, tags=tags).version)
    same = client.search_model_versions(f"name = '{name}'")
    oldest = min(int(v.version) for v in same if v.tags.get("weights_md5") == tags["weights_md5"])
    if str(oldest) != created:
        client.delete_model_version(name, created)
    return str(oldest)


def _log_model(run, served, example, name, about, params, folder):
    """The served model on the train run, with its signature; registered as ``name``
    (None: not registered)."""
    import torch
    from mlflow.models import infer_signature

    requirements = [f"torch=={torch.__version__.split('+')[0]}"]
    common = {"name": "model", "input_example": example, "registered_model_name": name}
    common |= {"params": params, "metadata": about, "pip_requirements": requirements}
    if isinstance(served, FromCode):
        files = {f: str(folder / f) for f in (MODEL_FILE, SPEC_FILE)}
        with mlflow.start_run(run_id=run):
            return mlflow.pyfunc.log_model(
                python_model=str(served.code),
                artifacts=files,
                signature=infer_signature(example, served.output),
                **common,
            )
    with torch.no_grad():
        output = served(torch.from_numpy(example)).numpy()
    extra = None if folder is None else [str(folder / MODEL_FILE), str(folder / SPEC_FILE)]
    with mlflow.start_run(run_id=run):
        return mlflow.pytorch.log_model(
            served, signature=infer_signature(example, output), extra_files=extra, **common
        )


def registered_version(client: MlflowClient, name: str, weights_md5: str) -> str | None:
    """The newest version of ``name`` tagged with ``weights_md5``; None if there is none."""
    versions = client.search_model_versions(f"name = '{name}'")  # [] if not registered
    matching = [int(v.version) for v in versions if v.tags.get("weights_md5") == weights_md5]
    return str(max(matching)) if matching else None
