"""Model files: model.pt (a state dict, loaded without unpickling code) and model.json (the
spec that rebuilds the network, plus what a caller needs to feed it)."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from reprolab.core.errors import CheckpointError
from reprolab.core.io import atomic_path, write_json
from reprolab.models._base import ModelSpec, build_model

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
) -> tuple[nn.Module, dict]:
    """Rebuild with ``build`` from model.json and load weights with ``weights_only=True`` (no
    pickle code); a missing or corrupt file names the stage (``<stage>@<model>``) to rerun."""
    spec_path, weights_path = folder / SPEC_FILE, folder / MODEL_FILE
    for path in (spec_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"{path}: not found; run `dvc repro {stage}@{folder.name}` first")
    info = json.loads(spec_path.read_text())
    model = build(ModelSpec.from_json(info))
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as err:  # torch raises several types for a corrupt zip/pickle
        raise CheckpointError(
            f"{weights_path}: cannot load ({type(err).__name__}: {err}); the file is corrupt, "
            f"delete it and run `dvc repro {stage}@{folder.name}`"
        ) from None
    return model.to(device).eval(), info


def model_metadata(meta: dict, input_max: float) -> dict:
    """What a caller needs to feed the model raw files: the task, class names and the pixel
    range (an 8-bit image is rescaled to ``[0, input_max]``, e.g. 16 for digits); for a
    regressor the feature columns and the output's meaning (log1p of the target)."""
    about = {"task": meta["task"], "classes": list(meta["classes"]), "input_max": input_max}
    if meta["task"] == "regression":
        about |= {"features": meta["features"], "output": f"log1p({meta['target']})"}
    return about


def read_best_params(folder: Path) -> dict:
    """The tuned params the tune stage wrote (best_params.json)."""
    path = folder / "best_params.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; run `dvc repro tune@{folder.name}` first")
    return json.loads(path.read_text())
