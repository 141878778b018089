"""scikit-learn's bundled digits: 1,797 real 8x8 handwritten digits, values 0..16.

The file ships inside scikit-learn, so the default pipeline needs no network.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from reprolab.data.fetch import Arrays
from reprolab.data.sources._sklearn import bundled_file

FILES = {"digits.csv.gz": "9b335364a7bfd63947c7480a5bd51f2d"}
locate = bundled_file


def load(raw_dir: Path) -> Arrays:
    with gzip.open(raw_dir / "digits.csv.gz", "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 1, 8, 8)
    return Arrays(x=images, y=table[:, -1], classes=[str(i) for i in range(10)])
