"""A user's table (CSV or Parquet): read without running code, checked, and encoded.

Numeric columns are imputed with the train split's median and standardised with its mean
and std; string columns become one-hot columns of the train split's categories plus an
"unknown" column (a missing value, or a category train never saw). ``fit`` learns that
transform from the train rows only and returns it as a JSON-able record; ``apply`` replays a
record on any rows, so `reprolab predict` encodes a new row exactly as ``split`` did.

Every fault of a table is one ``TableError`` line naming the file, the column and the row
(rows count from 1, the header not counted).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reprolab.core.errors import DataError, cut
from reprolab.core.kinds import LINEAR

SUFFIXES = (".csv", ".parquet")
UNKNOWN = "<unknown>"
# A numeric target with at most this many distinct whole values is guessed to be classes.
FEW_CLASSES = 20
RECORD_FORMAT = 1


class TableError(DataError):
    """A user's table that cannot be learned from: the file, column and row are named."""


def read_table(path: Path, shown: str | None = None):
    """The table at ``path`` as a pandas DataFrame of strings (CSV) or typed columns
    (Parquet); ``shown``: the name messages give the file."""
    import pandas as pd

    name = shown or str(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise TableError(f"{name}: a {suffix or 'suffix-less'} file; give .csv or .parquet")
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, skipinitialspace=True)
        else:
            frame = pd.read_parquet(path, engine="pyarrow")
    except pd.errors.EmptyDataError:
        raise TableError(f"{name}: the file is empty (no header, no rows)") from None
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        reason = cut(str(err).strip().splitlines()[0] if str(err).strip() else "", 160)
        raise TableError(f"{name}: cannot read as {suffix[1:]} ({reason})") from None
    if len(frame) == 0:
        raise TableError(f"{name}: the file is empty (a header, no data rows)")
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _first(mask) -> int:
    return int(np.flatnonzero(np.asarray(mask))[0]) + 1


def column_values(frame, column: str, name: str) -> tuple[str, np.ndarray]:
    """("number", float64 with NaN for missing) or ("category", object with None for missing)
    of one column; a column of numbers and words, or all missing, is an error."""
    import pandas as pd

    series = frame[column]
    where = f"{name}, column {column!r}"
    missing = series.isna().to_numpy()
    if missing.all():
        raise TableError(f"{where}: every value is missing; drop it (csv.drop) or fill it")
    if pd.api.types.is_bool_dtype(series):
        series = series.astype(str)
    if pd.api.types.is_numeric_dtype(series):
        numbers = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
        words = ~missing & np.isnan(numbers)
        if (words | missing).all():
            values = series.to_numpy(dtype=object)
            return "category", np.where(missing, None, values.astype(str))
        if words.any():
            w, n = _first(words), _first(~missing & ~words)
            raise TableError(
                f"{where}: mixes numbers and words (row {n}: {series.iloc[n - 1]!r}, row {w}: "
                f"{series.iloc[w - 1]!r}); make it all numbers (missing: leave empty) or all words"
            )
    if np.isinf(numbers).any():
        row = _first(np.isinf(numbers))
        raise TableError(f"{where}, row {row}: {numbers[row - 1]} is not a finite number")
    return "number", numbers


def target_values(
    frame, target: str, task: str, name: str, loss: str = "auto"
) -> tuple[str, np.ndarray, list[str], str]:
    """(task, y, classes, target scale): int64 class indices for classification, float32 for
    regression. ``task`` "auto": words or few whole numbers are classes, other numbers
    regression. A regression's scale (``loss``): log1p (RMSLE, every target >= 0) or linear
    (RMSE; "auto" takes it for a target with negative values)."""
    if target not in frame.columns:
        raise TableError(
            f"{name}: no target column {target!r} (csv.target); columns: "
            + cut(", ".join(frame.columns), 200)
        )
    where = f"{name}, column {target!r} (the target)"
    missing = frame[target].isna().to_numpy()
    if missing.any():
        raise TableError(f"{where}, row {_first(missing)}: missing; every row needs a target")
    kind, values = column_values(frame, target, name)
    if kind == "number":
        whole = np.all(values == np.round(values))
        if task == "auto":
            few = whole and len(np.unique(values)) <= FEW_CLASSES
            task = "classification" if few else "regression"
        if task == "regression":
            negative = values.min() < 0
            if negative and loss == "rmsle":
                row = _first(values < 0)
                raise TableError(
                    f"{where}, row {row}: {values[row - 1]:g} < 0; csv.loss rmsle (on log1p) "
                    "needs targets >= 0 (set csv.loss: rmse or auto)"
                )
            scale = LINEAR if negative or loss == "rmse" else "log1p"
            return task, values.astype(np.float32), [], scale
        labels = [str(int(v)) if whole else repr(float(v)) for v in values]
        order = sorted(set(labels), key=lambda s: float(s))
    else:
        if task == "regression":
            raise TableError(
                f"{where}, row 1: {values[0]!r} is a word; regression needs numbers "
                "(set csv.task: classification, or auto)"
            )
        labels, order = list(values), sorted(set(values))
    index = {c: i for i, c in enumerate(order)}
    return "classification", np.array([index[v] for v in labels], np.int64), order, ""


def inputs(frame, target: str, drop: list[str], max_categories: int, name: str) -> dict:
    """{column: (kind, values)} of every input column (not the target, not ``drop``)."""
    unknown = [c for c in drop if c not in frame.columns]
    if unknown:
        raise TableError(f"{name}: csv.drop names no column {unknown[0]!r} of the table")
    columns = {}
    for column in frame.columns:
        if column == target or column in drop:
            continue
        kind, values = column_values(frame, column, name)
        if kind == "category":
            seen: dict[str, None] = {}
            for row, value in enumerate(values, 1):
                if value is not None and value not in seen:
                    seen[value] = None
                    if len(seen) > max_categories:
                        raise TableError(
                            f"{name}, column {column!r}, row {row}: category {value!r} is "
                            f"number {len(seen)}, over csv.max_categories ({max_categories}); "
                            "drop the column (csv.drop) or raise the limit"
                        )
        columns[column] = (kind, values)
    if not columns:
        raise TableError(f"{name}: no input column left besides the target {target!r}")
    return columns


def fit(columns: dict, train: np.ndarray) -> list[dict]:
    """The transform of each column, learned from the ``train`` rows only."""
    fitted = []
    for column, (kind, values) in columns.items():
        rows = values[train]
        if kind == "number":
            present = rows[~np.isnan(rows)]
            median = float(np.median(present)) if len(present) else 0.0
            imputed = np.where(np.isnan(rows), median, rows)
            std = float(imputed.std()) or 1.0
            fitted.append(
                {
                    "name": column,
                    "kind": kind,
                    "median": median,
                    "mean": float(imputed.mean()),
                    "std": std,
                }  # fmt: skip
            )
        else:
            categories = sorted({v for v in rows if v is not None})
            fitted.append({"name": column, "kind": kind, "categories": categories})
    return fitted


def encoded_names(transform: list[dict]) -> list[str]:
    names = []
    for col in transform:
        if col["kind"] == "number":
            names.append(col["name"])
        else:
            names += [f"{col['name']}={c}" for c in [*col["categories"], UNKNOWN]]
    return names


def apply(transform: list[dict], columns: dict) -> tuple[np.ndarray, dict]:
    """The encoded float32 rows, and {column: (count, first row)} of the values that went to
    a column's unknown bucket though present (categories the fitted rows never held)."""
    parts, unseen = [], {}
    for col in transform:
        _, values = columns[col["name"]]
        if col["kind"] == "number":
            imputed = np.where(np.isnan(values), col["median"], values)
            parts.append(((imputed - col["mean"]) / col["std"])[:, None])
            continue
        index = {c: i for i, c in enumerate(col["categories"])}
        codes = np.array([index.get(v, len(index)) for v in values], np.int64)
        new = np.array([v is not None and v not in index for v in values], bool)
        if new.any():
            unseen[col["name"]] = [int(new.sum()), _first(new)]
        parts.append(np.eye(len(index) + 1)[codes])
    return np.concatenate(parts, axis=1).astype(np.float32), unseen


def unseen_warnings(record: dict) -> list[str]:
    """One line per column whose val/test rows hold categories train never saw: they go to
    its unknown bucket (a counted warning, not an error: a rare category is no bad table)."""
    return [
        f"warning: {record['file']}, column {column!r}: {count} val/test row(s) hold a "
        f"category the train split never saw (first: row {row}); encoded as {UNKNOWN}"
        for column, (count, row) in record["unseen"].items()
    ]


def encode_file(path: Path, record: dict) -> list[tuple[str, np.ndarray]]:
    """Each row of the table at ``path`` (the columns the model reads, by name; others are
    ignored) encoded with the recorded transform: ("<path>:<line>", float32 row)."""
    frame = read_table(path)
    columns = {}
    for col in record["columns"]:
        name = col["name"]
        if name not in frame.columns:
            wanted = ", ".join(c["name"] for c in record["columns"])
            raise TableError(f"{path}: no column {name!r}; the model reads {cut(wanted, 200)}")
        series = frame[name]
        missing = series.isna().to_numpy()
        if col["kind"] == "category":
            columns[name] = (col["kind"], np.where(missing, None, series.astype(str)))
            continue
        numbers = (
            series.to_numpy(dtype=np.float64, na_value=np.nan)
            if series.dtype.kind in "iuf"
            else None
        )
        if numbers is None:
            import pandas as pd

            numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~missing & ~np.isfinite(numbers)
        if bad.any():
            row = _first(bad)
            raise TableError(
                f"{path}, column {name!r}, row {row}: {series.iloc[row - 1]!r} is not a finite "
                "number (the model was trained on numbers in this column)"
            )
        columns[name] = (col["kind"], numbers)
    x, _ = apply(record["columns"], columns)
    return [(f"{path}:{row + 2}", values) for row, values in enumerate(x)]
