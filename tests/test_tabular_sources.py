"""The regression datasets: scikit-learn's bundled diabetes files, and California housing
from an archive written here in the layout scikit-learn's fetcher downloads."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from reprolab.core.errors import DataError
from reprolab.data.fetch import fetch_dataset, load_raw
from reprolab.data.sources import california_housing
from reprolab.data.split import write_splits


def test_diabetes_fetches_from_scikit_learn_and_splits_without_stratifying(
    tmp_path: Path,
) -> None:
    from sklearn.datasets import load_diabetes

    fetch_dataset("diabetes", tmp_path / "raw")
    arrays = load_raw("diabetes", tmp_path / "raw")
    reference = load_diabetes(scaled=False)
    assert arrays.task == "regression" and arrays.x.dtype == np.float32
    assert np.allclose(arrays.x, reference.data) and np.allclose(arrays.y, reference.target)
    assert arrays.features == list(reference.feature_names)
    meta = write_splits(arrays, tmp_path / "splits", 0.15, 0.15, seed=0)
    assert sum(meta["sizes"].values()) == 442 and meta["input_shape"] == [10]
    train_y = np.load(tmp_path / "splits" / "train.npz")["y"]
    assert meta["target_log1p_mean"] == pytest.approx(np.log1p(train_y.astype(float)).mean())
    assert len(meta["mean"]) == 10  # per-feature statistics, from train only


def cal_housing_archive(path: Path, n: int = 40) -> np.ndarray:
    """cal_housing.tgz as figshare serves it: CaliforniaHousing/cal_housing.data, columns
    longitude, latitude, age, rooms, bedrooms, population, households, income, value."""
    rng = np.random.default_rng(0)
    table = np.column_stack(
        [
            rng.uniform(-124, -114, n),
            rng.uniform(32, 42, n),
            rng.integers(1, 52, n),
            rng.integers(100, 5000, n),
            rng.integers(20, 1000, n),
            rng.integers(50, 3000, n),
            rng.integers(20, 900, n),
            rng.uniform(0.5, 15, n),
            rng.uniform(15000, 500001, n),
        ]
    )
    text = "\n".join(",".join(f"{v:.6f}" for v in row) for row in table).encode()
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("CaliforniaHousing/cal_housing.data")
        info.size = len(text)
        archive.addfile(info, io.BytesIO(text))
    return table


def test_california_housing_from_a_mirror_is_parsed_like_scikit_learn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = tmp_path / "mirror" / "california_housing"
    mirror.mkdir(parents=True)
    table = cal_housing_archive(mirror / "cal_housing.tgz")
    digest = hashlib.sha256((mirror / "cal_housing.tgz").read_bytes()).hexdigest()
    monkeypatch.setitem(california_housing.FILES, "cal_housing.tgz", f"sha256:{digest}")
    fetch_dataset("california_housing", tmp_path / "raw", mirror=str(tmp_path / "mirror"))
    arrays = load_raw("california_housing", tmp_path / "raw")
    assert arrays.x.shape == (40, 8) and arrays.features[0] == "MedInc"
    assert np.allclose(arrays.y, table[:, 8] / 100_000)
    assert np.allclose(arrays.x[:, 0], table[:, 7], rtol=1e-6)  # median income
    assert np.allclose(arrays.x[:, 2], table[:, 3] / table[:, 6], rtol=1e-5)  # rooms/household
    assert np.allclose(arrays.x[:, 5], table[:, 5] / table[:, 6], rtol=1e-5)  # occupancy


def test_california_housing_bad_archive_names_the_sha256(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    cal_housing_archive(mirror / "cal_housing.tgz")  # not the real archive: wrong checksum
    with pytest.raises(DataError) as err:
        fetch_dataset("california_housing", tmp_path / "raw", mirror=str(mirror))
    expected = california_housing.FILES["cal_housing.tgz"]
    assert "cal_housing.tgz" in str(err.value) and expected in str(err.value)
    assert not (tmp_path / "raw").exists()


def test_negative_regression_targets_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reprolab.data.fetch import Arrays, check_arrays

    bad = Arrays(x=np.zeros((5, 2), np.float32), y=np.array([1, 2, -3, 4, 5], np.float32))
    bad.task = "regression"
    with pytest.raises(DataError, match="target min is -3.0.*RMSLE"):
        check_arrays(bad, "mine")
    bad.target_scale = "linear"  # regressed on its own scale (RMSE): negative targets are fine
    check_arrays(bad, "mine")


def test_california_housing_online_downloads_once_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No mirror: the archive is downloaded (a file:// URL here) into the user cache, checked,
    copied to raw/; a second fetch reads the cache; offline with an empty cache is an error."""
    from reprolab.data import fetch

    served = tmp_path / "server" / "5976036"
    served.parent.mkdir()
    table = cal_housing_archive(served)
    digest = f"sha256:{hashlib.sha256(served.read_bytes()).hexdigest()}"
    monkeypatch.setitem(california_housing.FILES, "cal_housing.tgz", digest)
    monkeypatch.setattr(california_housing, "URL", served.as_uri())
    monkeypatch.setattr(fetch, "CACHE", tmp_path / "cache")  # never the user's ~/.cache

    fetch_dataset("california_housing", tmp_path / "raw")
    cached = tmp_path / "cache" / "california_housing" / "cal_housing.tgz"
    assert f"sha256:{hashlib.sha256(cached.read_bytes()).hexdigest()}" == digest
    assert [p.name for p in cached.parent.iterdir()] == ["cal_housing.tgz"]  # no .part left
    assert (tmp_path / "raw" / "cal_housing.tgz").read_bytes() == served.read_bytes()
    assert np.allclose(load_raw("california_housing", tmp_path / "raw").y, table[:, 8] / 1e5)

    served.unlink()  # offline from now on: the cached copy is used, not fetched again
    fetch_dataset("california_housing", tmp_path / "again")
    assert (tmp_path / "again" / "cal_housing.tgz").read_bytes() == cached.read_bytes()

    cached.unlink()
    with pytest.raises(DataError, match=f"cal_housing.tgz: the download .*failed.*{digest}"):
        fetch_dataset("california_housing", tmp_path / "offline")
    assert not (tmp_path / "offline").exists()


def test_split_meta_of_a_regression_is_json(tmp_path: Path) -> None:
    fetch_dataset("diabetes", tmp_path / "raw")
    write_splits(load_raw("diabetes", tmp_path / "raw"), tmp_path / "s", 0.2, 0.2, seed=1)
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["task"] == "regression" and meta["classes"] == []
    assert meta["target"] == "progression" and meta["target_log1p_std"] > 0
