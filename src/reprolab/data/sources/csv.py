"""A table of the user's own: a CSV or Parquet file under ``data/own/tabular/`` (``csv.path``),
one row per example, the column ``csv.target`` to learn (``csv.drop``: columns to ignore).

``download@tabular`` copies the file into data/raw/csv/ with the ``csv`` params it is read
with, and reads it once so a bad table stops there; dvc.yaml makes ``data/own/tabular/`` a dep
of that stage, so editing the table reruns everything downstream of it. ``split`` fits the
encoding (reprolab.data.tables) on the train rows and records it in meta.json; the models
copy it into model.json, where `reprolab predict` replays it on new rows.

The task: a target of words or of at most ``tables.FEW_CLASSES`` whole numbers is
classification, other numbers regression: RMSLE where every target is >= 0, RMSE on the
target's own scale where some are negative; ``csv.task`` and ``csv.loss`` override both.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from reprolab.core.io import read_json
from reprolab.core.paths import workspace_root
from reprolab.data import tables
from reprolab.data.fetch import Arrays
from reprolab.data.tables import TableError

KIND = "tabular"
FILES: dict[str, str] = {}  # the user's own file: DVC hashes its copy instead
OPTIONS_FILE = "csv.json"
HOME = Path("data") / "own" / "tabular"  # a dep of download@tabular in dvc.yaml


def own_table(path: str | None) -> Path:
    """``csv.path`` resolved (links followed) inside the workspace's data/own/tabular/, or an
    error: a table elsewhere would be no dep of the DAG, one outside the workspace no data
    of this project."""
    if not path:
        raise TableError(f"csv.path is not set: put your table in {HOME}/ and name it there")
    root = workspace_root().resolve()
    home = root / HOME
    resolved = (root / Path(path).expanduser()).resolve()
    if not resolved.is_relative_to(home):
        raise TableError(
            f"csv.path: {path!r} lies outside {HOME}/ of the workspace (resolved to "
            f"{resolved}); copy the table there: DVC tracks that folder"
        )
    if not resolved.is_file():
        raise TableError(f"csv.path: {path!r}: no such file")
    return resolved


def copy_into(dest: Path, options: dict) -> None:
    """Copy the user's table into ``dest`` beside the options it is read with."""
    source = own_table(options.get("path"))
    if not options.get("target"):
        raise TableError("csv.target is not set: name the column to learn")
    shown = source.relative_to(workspace_root().resolve()).as_posix()
    tables.read_table(source, shown)  # a wrong suffix or an unreadable file named as the user's
    shutil.copyfile(source, dest / f"table{source.suffix.lower()}")
    record = {k: options[k] for k in ("target", "drop", "task", "loss", "max_categories")}
    (dest / OPTIONS_FILE).write_text(json.dumps({"file": shown, **record}, indent=1) + "\n")


def load(raw_dir: Path) -> Arrays:
    options = read_json(raw_dir / OPTIONS_FILE, "download@tabular", ("file", "target"))
    name = options["file"]
    data = next(
        (raw_dir / f"table{s}" for s in tables.SUFFIXES if (raw_dir / f"table{s}").is_file()), None
    )
    if data is None:
        raise TableError(f"{raw_dir}: no copy of {name}; run `dvc repro -f download@tabular`")
    frame = tables.read_table(data, name)
    target = options["target"]
    loss = options.get("loss", "auto")  # a copy made before csv.loss existed: auto
    task, y, classes, scale = tables.target_values(frame, target, options["task"], name, loss)
    columns = tables.inputs(frame, target, options["drop"], options["max_categories"], name)

    def encode(train: np.ndarray) -> tuple[np.ndarray, dict]:
        transform = tables.fit(columns, train)
        x, unseen = tables.apply(transform, columns)
        record = {"format": tables.RECORD_FORMAT, "file": name, "target": target}
        record |= {"columns": transform, "unseen": unseen}
        return x, record

    raw = np.empty((len(y), len(columns)), dtype=object)  # encoded by ``split``, on train
    return Arrays(
        x=raw, y=y, classes=classes, task=task, features=list(columns), target=target,
        target_scale=scale or "log1p", encode=encode,
    )  # fmt: skip
