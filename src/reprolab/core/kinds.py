"""The kinds of input (``image``, ``tabular``): the task each one's models learn, and the
params sections of the sources that read the user's own files (``imagefolder:``, ``csv:``;
a section is named after its dataset, and download@<kind> hands it to the source)."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field

from reprolab.core import paths
from reprolab.core.errors import StageError
from reprolab.core.specs import PositiveInt, _Strict


class ImageFolderParams(_Strict):
    path: str | None = None  # root/<class>/<image> (or root/train/... + root/val/...)
    image_size: PositiveInt = 32


class CsvParams(_Strict):
    """``datasets.tabular: csv``: a CSV or Parquet table under data/own/tabular/."""

    path: str | None = None  # relative to the workspace root, inside data/own/tabular/
    target: str | None = None  # the column to learn
    drop: list[str] = Field(default_factory=list)  # columns that are no input (ids, leaks)
    # auto: words or few whole numbers are classes, other numbers are regressed.
    task: Literal["auto", "classification", "regression"] = "auto"
    # A regression's loss and score. auto: RMSLE (the network learns log1p of the target)
    # where every target is >= 0, else RMSE on the target's own scale.
    loss: Literal["auto", "rmsle", "rmse"] = "auto"
    max_categories: PositiveInt = 50  # distinct words a string column may hold


def unset_own_source(
    image: str, tabular: str, folder: ImageFolderParams, table: CsvParams
) -> str | None:
    """What a user's own dataset, selected in ``datasets``, lacks to be found: the params key
    and what to name there, in one line; None when nothing is missing."""
    needed = []
    if image == "imagefolder":
        needed.append(("imagefolder.path", "image", folder.path, "a root/<class>/<image> tree"))
    if tabular == "csv":
        needed.append(("csv.path", "tabular", table.path, "a table put in data/own/tabular/"))
        needed.append(("csv.target", "tabular", table.target, "the table's column to learn"))
    for key, kind, value, what in needed:
        if not value:
            return f"{key} is not set (datasets.{kind} is {key.split('.')[0]}): name {what}"
    return None


# meta.json's ``target_scale`` of a regression learned on the target's own scale (RMSE); absent,
# the regressors learn log1p of the target (RMSLE), as for the bundled tables.
LINEAR = "linear"


def regression_score(meta: dict) -> str:
    """The score (and loss) a regression is ranked by: RMSE on the target's own scale where
    meta.json's ``target_scale`` is linear, else RMSLE."""
    return "rmse" if meta.get("target_scale") == LINEAR else "rmsle"


def learned_stats(meta: dict) -> str:
    """The prefix of meta.json's train statistics of what a regressor learns (its output's
    scale): ``target`` (``target_mean``, ``target_std``) on a linear scale, else
    ``target_log1p``."""
    return "target" if meta.get("target_scale") == LINEAR else "target_log1p"


def kind_meta(kind: str) -> dict | None:
    """data/splits/<kind>/meta.json with its task, or None before any split."""
    meta = paths.splits_dir(kind) / "meta.json"
    if not meta.is_file():
        return None
    try:
        recorded = json.loads(meta.read_text())
        if isinstance(recorded, dict) and isinstance(recorded.get("task"), str):
            return recorded
    except ValueError:
        pass
    raise StageError(f"{meta}: no task recorded; run `dvc repro split@{kind}`")


def kind_task(kind: str) -> str:
    """The task of the dataset of ``kind`` (its models' and baselines'): classification for
    images; for the tabular kind the one its split recorded (regression before any split:
    a user's table's, decided from its target, exists only after split@tabular)."""
    if kind == "image":
        return "classification"
    meta = kind_meta(kind)
    return "regression" if meta is None else meta["task"]
