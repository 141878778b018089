"""scikit-learn's bundled diabetes data: 442 patients, 10 raw (unscaled) features, and a
disease-progression score one year later (25..346) to regress.

Both files ship inside scikit-learn, so the default regression model needs no network.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from reprolab.data.fetch import Arrays
from reprolab.data.sources._sklearn import bundled_file

KIND = "tabular"
FILES = {
    "diabetes_data_raw.csv.gz": "a8e967d45d7162dc51982bde4b33d507",
    "diabetes_target.csv.gz": "1a035fe70b2f8622146613365e30700c",
}
FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
locate = bundled_file


def load(raw_dir: Path) -> Arrays:
    with gzip.open(raw_dir / "diabetes_data_raw.csv.gz", "rt") as f:
        x = np.loadtxt(f, dtype=np.float32)
    with gzip.open(raw_dir / "diabetes_target.csv.gz", "rt") as f:
        y = np.loadtxt(f, dtype=np.float32)
    return Arrays(x=x, y=y, task="regression", features=FEATURES, target="progression")
