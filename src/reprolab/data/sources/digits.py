"""scikit-learn's bundled digits: 1,797 real 8x8 handwritten digits, values 0..16.

The file ships inside scikit-learn, so the default pipeline needs no network.
"""

from __future__ import annotations

import gzip
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from reprolab.data.fetch import Arrays

FILES = {"digits.csv.gz": "9b335364a7bfd63947c7480a5bd51f2d"}


def locate(file_name: str) -> Path | None:
    # find_spec locates scikit-learn without importing it (an import costs ~1.5 s).
    spec = find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / file_name
    return path if path.is_file() else None


def load(raw_dir: Path) -> Arrays:
    with gzip.open(raw_dir / "digits.csv.gz", "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 1, 8, 8)
    return Arrays(x=images, y=table[:, -1], classes=[str(i) for i in range(10)])
