"""Materialise a dataset's original files under data/raw/<name>/, checksummed.

Each file is looked up in the mirror first (a local folder or a URL prefix), then where the
source says it lies (a bundled copy or its own download). The folder appears only once every
file is present, verified and parseable, so a failure leaves data/ as it was.
"""

from __future__ import annotations

import shutil
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reprolab.core import registry
from reprolab.core.errors import DataError
from reprolab.core.io import atomic_dir, file_checksum
from reprolab.core.kinds import LINEAR
from reprolab.core.paths import workspace_root

CACHE = Path.home() / ".cache" / "reprolab"


@dataclass
class Arrays:
    """A dataset: images as uint8 (N, C, H, W) with int64 labels (N,), or feature rows as
    float32 (N, F) with float32 regression targets (N,). ``x`` is an array in memory, or rows
    decoded only when asked for (``len``, ``shape``, ``dtype``, ``x[index]``: imagefolder's
    ``ImageRows``), which the split stage writes out chunk by chunk."""

    x: np.ndarray  # or rows decoded on demand (see above)
    y: np.ndarray
    classes: list[str] = field(default_factory=list)
    task: str = "classification"
    # Rows of the dataset's published test split, when it has one (MNIST, CIFAR...).
    test_mask: np.ndarray | None = None
    features: list[str] = field(default_factory=list)  # tabular: column names
    target: str = ""  # regression: what y measures
    # regression: the scale the regressors learn y on: log1p (RMSLE; y >= 0) or linear (RMSE)
    target_scale: str = "log1p"
    # A user's table (sources/csv.py): x holds its raw cells; ``encode(train rows)`` fits the
    # encoding on those rows and returns (float32 x of every row, the JSON record of it).
    encode: Callable[[np.ndarray], tuple[np.ndarray, dict]] | None = None


def download_to_cache(url: str, dataset: str, file_name: str) -> Path | None:
    """Fetch ``url`` once into the user cache; None when offline (the caller says what to do).
    The caller verifies the checksum, so a bad download is reported, never used."""
    dest = CACHE / dataset / file_name
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError:
        partial.unlink(missing_ok=True)
        return None
    partial.replace(dest)
    return dest


def _from_mirror(
    mirror: str, dataset: str, file_name: str, dest: Path, layouts: list[str]
) -> str | None:
    """Copy ``file_name`` from the mirror to ``dest``; where it came from, or None."""
    if "://" in mirror:
        url = f"{mirror.rstrip('/')}/{dataset}/{file_name}"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
                shutil.copyfileobj(response, out)
        except OSError:
            return None
        return url
    folders = [Path(mirror) / dataset, Path(mirror), *(Path(mirror) / sub for sub in layouts)]
    for candidate in (folder / file_name for folder in folders):
        if candidate.is_file():
            shutil.copyfile(candidate, dest)
            return str(candidate)
    return None


def _drop_bad_copy(origin: Path) -> str:
    """What to do about a file whose checksum is wrong: a download in the user cache is
    deleted (the next run fetches it again); a mirror's or the user's own copy is theirs."""
    if CACHE in origin.parents:
        origin.unlink(missing_ok=True)
        return "the download was corrupt or truncated and is deleted: rerun to fetch it again"
    return "the file is corrupt, truncated or another version: replace it with the original"


def resolve_mirror(mirror: str | None) -> str | None:
    """A relative mirror folder is relative to the workspace root (temp experiments too)."""
    if not mirror or "://" in mirror:
        return mirror
    folder = Path(mirror).expanduser()
    if not folder.is_absolute():
        folder = workspace_root() / folder
    if not folder.is_dir():
        raise DataError(f"mirror: folder {mirror!r} does not exist (resolved to {folder})")
    return str(folder)


def check_arrays(arrays: Arrays, dataset: str) -> None:
    if len(arrays.x) == 0:
        raise DataError(f"dataset {dataset!r} is empty: check its files under the mirror/source")
    if len(arrays.x) != len(arrays.y):
        raise DataError(f"dataset {dataset!r}: {len(arrays.x)} inputs but {len(arrays.y)} labels")
    if arrays.task == "classification":
        n_classes = len(np.unique(arrays.y))
        if n_classes < 2:
            raise DataError(f"dataset {dataset!r} has {n_classes} class; a classifier needs 2+")
    else:
        numeric_x = arrays.encode is None  # a table's raw cells: checked by its source
        if not ((not numeric_x or np.isfinite(arrays.x).all()) and np.isfinite(arrays.y).all()):
            raise DataError(f"dataset {dataset!r} holds NaN or infinite values")
        if arrays.y.min() < 0 and arrays.target_scale != LINEAR:
            raise DataError(
                f"dataset {dataset!r}: target min is {arrays.y.min()}; RMSLE (the regression "
                "loss, on log1p targets) needs targets >= 0"
            )


def fetch_dataset(
    dataset: str, raw_dir: Path, mirror: str | None = None, options: dict | None = None
) -> dict[str, str]:
    """Write the verified original files of ``dataset`` to ``raw_dir``; return {file: md5}.

    A source of user files (``copy_into``) gets its params section as ``options``.
    """
    source = registry.dataset_module(dataset)
    mirror = resolve_mirror(mirror)
    with atomic_dir(raw_dir) as tmp:
        if hasattr(source, "copy_into"):
            source.copy_into(tmp, options or {})
        for file_name, expected in source.FILES.items():
            dest = tmp / file_name
            layouts = getattr(source, "MIRROR_LAYOUT", [])
            origin = mirror and _from_mirror(mirror, dataset, file_name, dest, layouts)
            if not origin:
                found = source.locate(file_name)
                if found is None:
                    where = f"not in mirror {mirror!r}, and " if mirror else ""
                    raise DataError(
                        f"{dataset}: {file_name}: {where}the download from its source failed "
                        f"(offline?); put the original file (checksum {expected}) in "
                        f"<mirror>/{dataset}/ and set `mirror` in params.yaml"
                    )
                shutil.copyfile(found, dest)
                origin = str(found)
            actual = file_checksum(dest, expected)
            if actual != expected:
                raise DataError(
                    f"{dataset}: {file_name} from {origin} has checksum {actual}, "
                    f"expected {expected}; {_drop_bad_copy(Path(origin))}"
                )
        check_arrays(source.load(tmp), dataset)
    return dict(source.FILES)


def load_raw(dataset: str, raw_dir: Path) -> Arrays:
    arrays = registry.dataset_module(dataset).load(raw_dir)
    check_arrays(arrays, dataset)
    return arrays
