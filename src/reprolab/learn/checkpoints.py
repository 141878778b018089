"""Final training with the tuned params, the model files, and their MLflow registration."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from reprolab.core import paths
from reprolab.core.errors import CheckpointError
from reprolab.core.io import atomic_path, write_json, write_tsv
from reprolab.learn import distributed
from reprolab.learn.context import ModelContext
from reprolab.learn.engine import fit, make_optimizer, predict
from reprolab.learn.tasks.supervised import TASKS
from reprolab.models._base import ModelSpec, build_model
from reprolab.tracking.runs import Tracker, flatten, registered_name

MODEL_FILE = "model.pt"
SPEC_FILE = "model.json"


def save_model(model: nn.Module, spec: ModelSpec, folder: Path, extra: dict) -> str:
    """Write model.pt and model.json; return the weights' md5 (the hash dvc.lock records)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # Through a buffer: torch.save names the archive inside the zip after the target file,
    # and the temp file's random name would make equal weights differ byte-wise.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    weights = buffer.getvalue()
    with atomic_path(folder / MODEL_FILE) as tmp:
        tmp.write_bytes(weights)
    md5 = hashlib.md5(weights).hexdigest()
    # The md5 ties the DVC file to its MLflow model version (tag ``weights_md5``).
    write_json(folder / SPEC_FILE, spec.to_json() | extra | {"weights_md5": md5})
    return md5


def load_model(
    folder: Path,
    device: torch.device | str = "cpu",
    build: Callable[[ModelSpec], nn.Module] = build_model,
    stage: str = "train",
    shown: str | None = None,
) -> tuple[nn.Module, dict]:
    """Rebuild with ``build`` from model.json and load weights with ``weights_only=True`` (no
    pickle code); a missing or corrupt file names the stage (``<stage>@<model>``) to rerun.
    ``shown`` names the files' origin in messages instead (a registry version's URI)."""
    spec_path, weights_path = folder / SPEC_FILE, folder / MODEL_FILE
    rerun = f"run `dvc repro {stage}@{folder.name}`"
    if shown is not None:
        rerun = f"register it again with `dvc repro {stage}@<model>`"
    for path in (spec_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"{shown or path}: {path.name} not found; {rerun} first")
    info = json.loads(spec_path.read_text())
    model = build(ModelSpec.from_json(info))
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as err:  # torch raises several types for a corrupt zip/pickle
        raise CheckpointError(
            f"{shown or weights_path}: cannot load {MODEL_FILE} ({_load_fault(err)}); the file "
            f"is corrupt or not a state dict, delete it and {rerun}"
        ) from None
    return model.to(device).eval(), info


def _load_fault(err: Exception) -> str:
    """One line for a failed weights-only load (torch's own message spans many lines and
    suggests ``weights_only=False``, which would run the file's pickled code)."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError):
        found = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
        detail = found.group(1).strip() if found else "not plain tensors"
        return f"it holds pickled objects besides tensors, never unpickled here: {detail}"
    lines = text.strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def params_hash(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def train_final(ctx: ModelContext, best: dict, tags: dict[str, str]) -> dict | None:
    """Train on train with early stopping on val; write model, curves and val metrics.
    Under torchrun every rank trains; rank 0 writes and returns the metrics, others None."""
    p = ctx.params
    train, val = ctx.load("train"), ctx.load("val")
    model = ctx.new_model()
    started = time.perf_counter()
    result = fit(
        model,
        train,
        val,
        optimizer=make_optimizer(model, ctx.spec, best["lr"], best["weight_decay"]),
        train_params=ctx.train,
        epochs=ctx.train.max_epochs,
        batch_size=ctx.spec.batch_size,
        seed=p.seed,
        task=ctx.task,
        desc=f"train {ctx.name}",
    )
    # Wall-clock time goes to MLflow only: DVC outputs must be byte-equal across reruns.
    train_seconds = time.perf_counter() - started
    if not distributed.is_main():
        return None  # under torchrun, rank 0 alone evaluates, writes and logs
    val_metrics = TASKS[ctx.task].metrics(predict(model, val), val.y)
    run_record = describe_run(ctx, result, best, model)
    folder = paths.model_dir(ctx.name)
    about = model_metadata(ctx.meta, float(train.x.max()))
    extra = {"study": best["study"], "model": ctx.name, **about}
    weights_md5 = save_model(model, ctx.arch_spec, folder, extra)
    write_tsv(paths.PLOTS / "curves" / f"{ctx.name}.tsv", result.history)
    metrics = {"val": val_metrics, "train": run_record}
    write_json(paths.METRICS / ctx.name / "train.json", metrics)
    logged = {**{f"val_{k}": v for k, v in val_metrics.items()}, "train_seconds": train_seconds}
    _log_final(ctx, model, best, tags, logged, run_record, result.history, val, about, weights_md5)
    return metrics


def describe_run(ctx: ModelContext, result, best: dict, counted: nn.Module) -> dict:
    """train.json's ``train`` block: epochs, device, thread count (float results depend on
    it), the params trained with and the size of ``counted``. ``result`` is a fit result
    (``best_epoch``, ``history``)."""
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "device": ctx.device.type,
        "threads": ctx.params.threads,
        "lr": best["lr"],
        "weight_decay": best["weight_decay"],
        "n_parameters": sum(t.numel() for t in counted.parameters()),
    }


def model_metadata(meta: dict, input_max: float) -> dict:
    """What a caller needs to feed the model raw files: the task, class names and the pixel
    range (an 8-bit image is rescaled to ``[0, input_max]``, e.g. 16 for digits); for a
    regressor the feature columns and the output's meaning (log1p of the target)."""
    about = {"task": meta["task"], "classes": list(meta["classes"]), "input_max": input_max}
    if meta["task"] == "regression":
        about |= {"features": meta["features"], "output": f"log1p({meta['target']})"}
    return about


def _log_final(ctx, model, best, tags, logged, run_record, history, val, about, weights_md5):
    train_params = flatten("train", ctx.train.model_dump(mode="json"))
    log_final_model(
        ctx,
        best,
        tags,
        history=history,
        logged=logged,
        served=model.to("cpu").eval(),
        example=val.x[:4].float().cpu().numpy(),
        about=about,
        weights_md5=weights_md5,
        params={**train_params, **{k: str(v) for k, v in run_record.items()}},
        folder=paths.model_dir(ctx.name),
    )


def log_final_model(
    ctx,
    best: dict,
    tags: dict[str, str],
    *,
    history: list[dict],
    logged: dict[str, float],
    served: nn.Module,
    example,
    about: dict,
    weights_md5: str,
    params: dict | None = None,
    version_tags: dict[str, str] | None = None,
    folder: Path | None = None,
) -> None:
    """On the model's parent run: the final epochs (``final.*``), the final metrics, and the
    served model logged with signature and registered as ``<dataset>-<model>``, its version
    tagged with git sha, data md5s, params hash, device and the weights' md5.

    ``folder`` (the DVC model folder): its model.pt + model.json travel with the logged model
    as ``extra_files/``, so `reprolab predict` rebuilds the network from them (weights_only)
    and never loads the served flavour, which `mlflow models serve` unpickles."""
    import mlflow
    from mlflow.models import infer_signature

    tracker = Tracker(ctx.dataset, ctx.name, best["study"])
    parent = tracker.parent_run_id(tags)
    for row in history:
        tracker.log(
            parent,
            metrics={f"final.{k}": v for k, v in row.items() if k != "epoch"},
            step=int(row["epoch"]),
        )
    tracker.log(parent, metrics=logged)
    with torch.no_grad():
        output = served(torch.from_numpy(example)).numpy()
    with mlflow.start_run(run_id=parent):
        info = mlflow.pytorch.log_model(
            served,
            name="model",
            signature=infer_signature(example, output),
            input_example=example,
            registered_model_name=registered_name(ctx.dataset, ctx.name),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            params=params,
            metadata=about,
            extra_files=None
            if folder is None
            else [str(folder / MODEL_FILE), str(folder / SPEC_FILE)],
        )
    version = info.registered_model_version
    if version is not None:
        name = registered_name(ctx.dataset, ctx.name)
        all_tags = {
            "git_sha": tags.get("reprolab.git_sha", "unknown"),
            "data_md5": ",".join(f"{k}={v}" for k, v in tags.items() if "data_md5" in k),
            "params_hash": params_hash({"model": ctx.spec.model_dump(mode="json"), **best}),
            "device": ctx.device.type,
            "weights_md5": weights_md5,
            **(version_tags or {}),
        }
        for key, value in all_tags.items():
            tracker.client.set_model_version_tag(name, str(version), key, value)
