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


def kind_task(kind: str) -> str:
    """The task of the dataset of ``kind`` (its models' and baselines'): classification for
    images; for the tabular kind the one its split recorded (regression before any split:
    a user's table's, decided from its target, exists only after split@tabular)."""
    if kind == "image":
        return "classification"
    meta = paths.splits_dir(kind) / "meta.json"
    if not meta.is_file():
        return "regression"
    try:
        return json.loads(meta.read_text())["task"]
    except (ValueError, KeyError, TypeError):
        raise StageError(f"{meta}: no task recorded; run `dvc repro split@{kind}`") from None
