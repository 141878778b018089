"""Where things live: DVC outputs relative to the run's checkout, stores under the workspace.

DVC outputs are relative paths, so ``dvc exp run --temp`` writes them in its temp copy.
The MLflow and Optuna stores are absolute paths under the *workspace* root: DVC sets
``DVC_ROOT`` to the parent repo even for temp/queued experiments, so every run of the
same repo shares one tracking store and one study storage.
"""

from __future__ import annotations

import os
from pathlib import Path

RAW = Path("data/raw")
SPLITS = Path("data/splits")
MODELS = Path("models")
METRICS = Path("metrics")
PLOTS = Path("plots")
REPORTS = Path("reports")
# A trained model's files in models/<name>/: weights (a state dict) and the spec that builds it.
MODEL_FILE = "model.pt"
SPEC_FILE = "model.json"


def workspace_root() -> Path:
    """DVC_ROOT if DVC set it, else the nearest folder above the cwd holding ``.dvc``."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return here


def splits_dir(kind: str) -> Path:
    """The splits of the dataset of one kind (``image`` or ``tabular``)."""
    return SPLITS / kind


def split_file(kind: str, name: str) -> Path:
    return splits_dir(kind) / f"{name}.npz"


def model_dir(model: str) -> Path:
    return MODELS / model


# dvc.yaml's stage names per model group: tune@mlp, tune_regressor@tabular_mlp, ...
STAGE_SUFFIX = {"classifiers": "", "regressors": "_regressor", "generators": "_generator"}


def stage_name(step: str, group: str, model: str) -> str:
    """The dvc.yaml name of ``step`` (tune, train, evaluate) for ``model`` of ``group``."""
    return f"{step}{STAGE_SUFFIX[group]}@{model}"
