"""Model files: model.pt (a state dict, loaded without unpickling code) and model.json (the
spec that rebuilds the network, plus what a caller needs to feed it)."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from reprolab.core.errors import CheckpointError
from reprolab.core.io import atomic_path, read_json, write_json
from reprolab.core.kinds import regression_score
from reprolab.core.paths import MODEL_FILE, SPEC_FILE
from reprolab.models._base import ModelSpec, build_saved


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
    build: Callable[[ModelSpec], nn.Module] = build_saved,
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
    try:
        info = json.loads(spec_path.read_text())
        model = build(ModelSpec.from_json(info))
    except (ValueError, KeyError, TypeError, AttributeError) as err:  # edited or corrupt
        raise CheckpointError(
            f"{shown or spec_path}: not a model spec this code can build "
            f"({type(err).__name__}: {err}); {rerun} to write it again"
        ) from None
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


def model_metadata(meta: dict, input_max: float) -> dict:
    """What a caller needs to feed the model raw files: the task, class names and the pixel
    range (an 8-bit image is rescaled to ``[0, input_max]``, e.g. 16 for digits); for a
    regressor the feature columns and the output's meaning: ``log1p(<target>)``, or the
    target's name where it is learned on its own scale (:func:`learns_log1p`)."""
    about = {"task": meta["task"], "classes": list(meta["classes"]), "input_max": input_max}
    if meta["task"] == "regression":
        target = meta["target"]
        output = f"log1p({target})" if regression_score(meta) == "rmsle" else target
        about |= {"features": meta["features"], "output": output}
    if "table" in meta:  # a user's table: the encoding `reprolab predict` replays on new rows
        about |= {"features": meta["features"], "table": meta["table"]}
    return about


def learns_log1p(about: dict) -> bool:
    """Whether a regressor's network outputs log1p of its target (model.json's ``output``
    names ``log1p(<target>)``; a model saved before linear scales existed has no other)."""
    output = about.get("output")
    return output is None or str(output).startswith("log1p(")


def read_best_params(folder: Path, stage: str | None = None) -> dict:
    """The tuned params the tune stage (``stage``, default tune@<folder name>) wrote."""
    stage = stage or f"tune@{folder.name}"
    return read_json(folder / "best_params.json", stage, ("lr", "weight_decay"))
