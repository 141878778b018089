"""The stratified, seeded train/val/test split, written once as separate files.

Only ``evaluate`` may read test.npz; meta.json carries what other stages need to know
about the data (shape, classes, and normalisation statistics from the train split only).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from reprolab.core.errors import DataError
from reprolab.core.io import atomic_path, write_json
from reprolab.core.kinds import LINEAR, learned_stats
from reprolab.core.npz import Member, NpzWriter, chunk_rows, open_npz
from reprolab.data.fetch import Arrays

SPLITS = ("train", "val", "test")


def split_indices(
    y: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    test_mask: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Stratified indices for train/val/test; sorted, so file order does not depend on RNG.

    With ``test_mask`` (a published test split) those rows are the test split, and
    ``val_fraction`` is taken from the remaining (published train) rows.
    """
    index = np.arange(len(y))
    stratify = y if _can_stratify(y, val_fraction, test_fraction) else None
    if test_mask is not None:
        rest, test = index[~test_mask], index[test_mask]
        val_of_rest = val_fraction
        if stratify is not None:
            _can_split_published_train(y[rest], val_of_rest)
    else:
        rest, test = train_test_split(
            index, test_size=test_fraction, random_state=seed, stratify=stratify
        )
        val_of_rest = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(
        rest,
        test_size=val_of_rest,
        random_state=seed,
        stratify=None if stratify is None else y[rest],
    )
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _can_stratify(y: np.ndarray, val_fraction: float, test_fraction: float) -> bool:
    if not np.issubdtype(y.dtype, np.integer):
        return False  # regression targets
    counts = np.bincount(y)
    counts = counts[counts > 0]
    smallest = min(val_fraction, test_fraction) * len(y)
    if counts.min() < 3 or smallest < len(counts):
        raise DataError(
            f"cannot stratify: the rarest class has {counts.min()} samples and the smallest "
            f"split {smallest:.0f} rows for {len(counts)} classes; lower the split fractions "
            "or use a larger dataset"
        )
    return True


def _can_split_published_train(y_train: np.ndarray, val_fraction: float) -> None:
    """The published train rows (imagefolder's train/) split stratified into train and val:
    each class needs 2 rows, and each part a row per class (sklearn's ValueError otherwise)."""
    counts = np.bincount(y_train)
    present = np.flatnonzero(counts)
    rarest = present[counts[present].argmin()]
    n_val = int(np.ceil(val_fraction * len(y_train)))
    if counts[rarest] < 2 or min(n_val, len(y_train) - n_val) < len(present):
        raise DataError(
            f"cannot stratify the published train split into train and val: its rarest class "
            f"(label {rarest}) has {counts[rarest]} sample(s), and split.val_fraction gives "
            f"{n_val} of {len(y_train)} rows for {len(present)} classes; add images to that "
            "class's train/ folder, or change split.val_fraction"
        )


def channel_stats(x: np.ndarray | Member) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (axis 1 is channels/features), from the train split only.

    Small integers (images) are summed exactly, chunk by chunk, so a split of any size is
    read in bounded memory and the figures do not depend on how it was chunked; anything
    else (a table's float features, held in memory) in float64 as a whole."""
    if x.dtype.kind not in "ui" or x.dtype.itemsize > 2:
        values = np.asarray(x.load() if isinstance(x, Member) else x).astype(np.float64)
        axes = tuple(i for i in range(values.ndim) if i != 1)
        mean, std = values.mean(axis=axes), values.std(axis=axes)
        std[std == 0] = 1.0
        return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]
    channels = x.shape[1]
    total, squares = [0] * channels, [0] * channels
    step = chunk_rows(8 * int(np.prod(x.shape[1:])))  # int64 copies of CHUNK_BYTES at most
    for start in range(0, len(x), step):
        stop = min(start + step, len(x))
        rows = x.rows(start, stop) if isinstance(x, Member) else x[start:stop]
        values = np.moveaxis(rows, 1, 0).reshape(channels, -1).astype(np.int64)
        for c, (s, q) in enumerate(zip(values.sum(1), (values * values).sum(1), strict=True)):
            total[c], squares[c] = total[c] + int(s), squares[c] + int(q)
    count = len(x) * int(np.prod(x.shape[2:]))
    # Python's int / int is correctly rounded: the mean is the float64 numpy's mean gives.
    mean = [t / count for t in total]
    std = [
        math.sqrt((count * q - t * t) / (count * count)) or 1.0
        for t, q in zip(total, squares, strict=True)
    ]
    return [round(m, 6) for m in mean], [round(s, 6) for s in std]


def write_splits(
    arrays: Arrays,
    out_dir: Path,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    official_test: bool = True,
) -> dict:
    mask = arrays.test_mask if official_test else None
    indices = split_indices(arrays.y, val_fraction, test_fraction, seed, mask)
    x, table = arrays.x, None
    if arrays.encode is not None:  # a user's table: its encoding fitted on train only
        x, table = arrays.encode(indices["train"])
    for name in SPLITS:
        write_split_file(out_dir / f"{name}.npz", x, arrays.y, indices[name])
    mean, std = channel_stats(open_npz(out_dir / "train.npz")["x"])
    meta = {
        "task": arrays.task,
        "classes": arrays.classes,
        "input_shape": list(x.shape[1:]),
        "mean": mean,
        "std": std,
        "sizes": {name: int(len(idx)) for name, idx in indices.items()},
        "official_test": mask is not None,
    }
    if arrays.task == "regression":
        # The regressors learn log1p(y) (RMSLE), or y itself where its scale is linear (RMSE);
        # the train split's statistics of what they learn scale their output.
        linear = arrays.target_scale == LINEAR
        learned = learned_target(arrays.y[indices["train"]], linear)
        meta |= {"features": arrays.features, "target": arrays.target}
        meta |= {"target_scale": LINEAR} if linear else {}  # absent: log1p, as ever
        stats = learned_stats(meta)
        meta |= {
            f"{stats}_mean": round(float(learned.mean()), 6),
            f"{stats}_std": round(float(learned.std()) or 1.0, 6),
        }
    if table is not None:
        meta |= {"features": arrays.features, "target": arrays.target, "table": table}
    meta["trivial_val"] = trivial_scores(arrays, indices)
    write_json(out_dir / "meta.json", meta)
    return meta


def write_split_file(path: Path, x, y: np.ndarray, rows: np.ndarray) -> None:
    """``np.savez(path, x=x[rows], y=y[rows])``, byte for byte. Inputs decoded on demand
    (an image tree's ``ImageRows``) are written in chunks, never held whole."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f, NpzWriter(f) as npz:
        if isinstance(x, np.ndarray):
            npz.array("x", x[rows])
        else:
            step = chunk_rows(int(np.prod(x.shape[1:])) * x.dtype.itemsize)
            with npz.member("x", (len(rows), *x.shape[1:]), x.dtype) as write:
                for start in range(0, len(rows), step):
                    write(x[rows[start : start + step]])
        npz.array("y", y[rows])


def trivial_scores(arrays: Arrays, indices: dict[str, np.ndarray]) -> dict[str, float]:
    """Validation scores of a model that ignores its input: the bar any model must clear
    to be worth anything (the report flags one that does not, and never makes it champion).
    Classes: always the train split's majority class; regression: always the train split's
    mean of what the regressors learn (log1p of the target, or the target on a linear scale)."""
    y_train, y_val = arrays.y[indices["train"]], arrays.y[indices["val"]]
    if arrays.task == "regression":
        linear = arrays.target_scale == LINEAR
        error = learned_target(y_val, linear) - learned_target(y_train, linear).mean()
        return {"rmse" if linear else "rmsle": round(float(np.sqrt(np.mean(error**2))), 6)}
    majority = int(np.bincount(y_train.astype(np.int64)).argmax())
    share = float(np.mean(y_val == majority))
    n_classes = max(len(arrays.classes), 1)
    # Macro-F1 of the constant guess: the majority class's F1, the others score 0.
    return {
        "accuracy": round(share, 6),
        "macro_f1": round(2 * share / (1 + share) / n_classes, 6),
    }


def learned_target(y: np.ndarray, linear: bool) -> np.ndarray:
    """What the regressors learn of targets ``y``, in float64: y, or log1p(y) (RMSLE)."""
    y = y.astype(np.float64)
    return y if linear else np.log1p(y)
