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


# The test plot folder dvc.yaml declares per group: a tabular model that classifies (a user's
# table) writes its confusion rows where the regressors' scatter would go.
TEST_PLOT = {"classifiers": "confusion", "regressors": "predictions"}


def stage_name(step: str, group: str, model: str) -> str:
    """The dvc.yaml name of ``step`` (tune, train, evaluate) for ``model`` of ``group``."""
    return f"{step}{STAGE_SUFFIX[group]}@{model}"


# The outputs whose names hold a model's key (dvc.yaml), and the most a writer adds to a file
# name for its temp file: DVC's "<name>.<32 hex>.tmp", core.io's ".<name>.<8 chars>.tmp".
KEY_OUTPUTS = (
    "plots/trials/{}.tsv",  # every model's; the first named
    "plots/predictions/{}.csv",
    "plots/confusion/{}.csv",
    "plots/samples/{}.png",
    "metrics/{}/train.json",
    "models/{}/best_params.json",
)
TEMP_NAME_EXTRA = len(".0123456789abcdef0123456789abcdef.tmp")


def check_key_fits(key: str, root: Path = Path(".")) -> None:
    """Raise ValueError when an output named after the model ``key`` (or its temp file) would
    be a file name or path longer than the file system under ``root`` allows: found by
    `reprolab check`, not as ENAMETOOLONG from a stage."""
    try:
        name_max = os.pathconf(root, "PC_NAME_MAX")
        path_max = os.pathconf(root, "PC_PATH_MAX")
    except (OSError, ValueError):  # a file system that does not say: left to the stages
        return
    base = len(os.fsencode(root.resolve())) + 1
    for template in KEY_OUTPUTS:
        rel = template.format(key)
        longest = max(len(os.fsencode(part)) for part in rel.split("/")) + TEMP_NAME_EXTRA
        if longest > name_max or base + len(os.fsencode(rel)) + TEMP_NAME_EXTRA >= path_max:
            over = "file name" if longest > name_max else "path"
            limit = name_max if longest > name_max else path_max
            raise ValueError(
                f"model name of {len(key)} characters is too long: the {over} of its output "
                f"{template.format('<name>')} (and its temp file) would pass this file "
                f"system's limit of {limit} bytes; shorten it"
            )
