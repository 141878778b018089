"""California housing (1990 census): 20,640 block groups, 8 features, median house value in
units of $100,000 to regress.

The original archive is the one scikit-learn's ``fetch_california_housing`` downloads, with
the same URL and sha256; it is parsed the way that fetcher does (same columns, same derived
averages), but from the checksummed archive under data/raw/, so a mirror folder holding
``cal_housing.tgz`` works offline.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from reprolab.core.errors import DataError
from reprolab.data.fetch import Arrays, download_to_cache

KIND = "tabular"
URL = "https://ndownloader.figshare.com/files/5976036"
FILES = {
    "cal_housing.tgz": "sha256:aaa5c9a6afe2225cc2aed2723682ae403280c4a3695a2ddda4ffb5d8215ea681"
}
FEATURES = [
    "MedInc",
    "HouseAge",
    "AveRooms",
    "AveBedrms",
    "Population",
    "AveOccup",
    "Latitude",
    "Longitude",
]
MEMBER = "CaliforniaHousing/cal_housing.data"


def locate(file_name: str) -> Path | None:
    return download_to_cache(URL, "california_housing", file_name)


def load(raw_dir: Path) -> Arrays:
    with tarfile.open(raw_dir / "cal_housing.tgz") as archive:
        member = archive.extractfile(MEMBER)
        if member is None:
            raise DataError(f"{raw_dir / 'cal_housing.tgz'}: no {MEMBER} inside")
        table = np.loadtxt(member, delimiter=",")
    # The archive's column order, rearranged as scikit-learn's fetcher does.
    table = table[:, [8, 7, 2, 3, 4, 5, 6, 1, 0]]
    y, x = table[:, 0] / 100_000.0, table[:, 1:]
    households = x[:, 5].copy()
    x[:, 2] /= households  # rooms per household
    x[:, 3] /= households  # bedrooms per household
    x[:, 5] = x[:, 4] / households  # occupants per household
    return Arrays(
        x=x.astype(np.float32),
        y=y.astype(np.float32),
        task="regression",
        features=FEATURES,
        target="MedHouseVal",
    )
