"""Dataset fetch (checksums, mirror, atomicity) and the stratified split."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from reprolab.core.errors import DataError
from reprolab.core.io import atomic_path, md5_file
from reprolab.data.fetch import fetch_dataset, load_raw
from reprolab.data.sources import digits
from reprolab.data.split import channel_stats, split_indices, write_splits


def test_digits_fetch_verifies_and_loads(tmp_path: Path) -> None:
    files = fetch_dataset("digits", tmp_path / "raw" / "digits")
    assert files == digits.FILES
    arrays = load_raw("digits", tmp_path / "raw" / "digits")
    assert arrays.x.shape == (1797, 1, 8, 8) and arrays.x.dtype == np.uint8
    assert sorted(np.unique(arrays.y)) == list(range(10))


def test_mirror_is_consulted_first_and_checked(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror" / "digits"
    mirror.mkdir(parents=True)
    original = digits.locate("digits.csv.gz")
    (mirror / "digits.csv.gz").write_bytes(original.read_bytes()[:-100])  # truncated
    raw = tmp_path / "raw" / "digits"
    with pytest.raises(DataError) as err:
        fetch_dataset("digits", raw, mirror=str(tmp_path / "mirror"))
    message = str(err.value)
    assert "digits.csv.gz" in message and digits.FILES["digits.csv.gz"] in message
    assert "replace it with the original" in message and str(mirror) in message
    assert not raw.exists() and list(raw.parent.iterdir()) == []  # nothing half-written

    shutil.copyfile(original, mirror / "digits.csv.gz")
    fetch_dataset("digits", raw, mirror=str(tmp_path / "mirror"))
    assert md5_file(raw / "digits.csv.gz") == digits.FILES["digits.csv.gz"]


def test_one_class_dataset_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    rows = "\n".join(",".join(["0"] * 64 + ["3"]) for _ in range(20))
    (mirror / "digits.csv.gz").write_bytes(gzip.compress(rows.encode()))
    monkeypatch.setitem(digits.FILES, "digits.csv.gz", md5_file(mirror / "digits.csv.gz"))
    with pytest.raises(DataError, match="1 class"):
        fetch_dataset("digits", tmp_path / "raw" / "digits", mirror=str(mirror))
    assert not (tmp_path / "raw" / "digits").exists()


def test_split_is_stratified_disjoint_and_seeded() -> None:
    y = np.repeat(np.arange(10), 50)
    a = split_indices(y, 0.2, 0.2, seed=1)
    b = split_indices(y, 0.2, 0.2, seed=1)
    c = split_indices(y, 0.2, 0.2, seed=2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])
    together = np.concatenate(list(a.values()))
    assert len(together) == len(y) == len(np.unique(together))
    for name in ("val", "test"):
        assert (np.bincount(y[a[name]]) == 10).all()  # exactly 20% of each class


def test_split_refuses_classes_too_rare_to_stratify() -> None:
    y = np.array([0] * 50 + [1] * 2)
    with pytest.raises(DataError, match="rarest class has 2"):
        split_indices(y, 0.2, 0.2, seed=0)


def test_normalisation_comes_from_train_only(tmp_path: Path) -> None:
    arrays = load_raw("digits", fetch_dataset("digits", tmp_path / "raw") and tmp_path / "raw")
    meta = write_splits(arrays, tmp_path / "splits", 0.15, 0.15, seed=0)
    train = np.load(tmp_path / "splits" / "train.npz")["x"]
    assert (meta["mean"], meta["std"]) == channel_stats(train)
    assert meta["sizes"] == {"train": 1257, "val": 270, "test": 270}


def test_atomic_write_leaves_nothing_when_interrupted(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
