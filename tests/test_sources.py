"""The torchvision-backed sources on small files written here in each original format."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import CIFAR10

from reprolab.core.errors import DataError
from reprolab.data.fetch import fetch_dataset, load_raw
from reprolab.data.sources import cifar10, fashion_mnist, kmnist, mnist
from reprolab.data.split import write_splits


def idx_images(images: np.ndarray) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", 2051, n, rows, cols) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def write_idx_mirror(folder: Path, n_train: int = 60, n_test: int = 20) -> dict[str, str]:
    """gzipped IDX files as the MNIST family ships them; returns {file: md5}."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    payloads = {
        "train-images-idx3-ubyte.gz": idx_images(rng.integers(0, 256, (n_train, 28, 28))),
        "train-labels-idx1-ubyte.gz": idx_labels(np.arange(n_train) % 10),
        "t10k-images-idx3-ubyte.gz": idx_images(rng.integers(0, 256, (n_test, 28, 28))),
        "t10k-labels-idx1-ubyte.gz": idx_labels(np.arange(n_test) % 10),
    }
    md5 = {}
    for name, payload in payloads.items():
        data = gzip.compress(payload, mtime=0)
        (folder / name).write_bytes(data)
        md5[name] = hashlib.md5(data).hexdigest()
    return md5


@pytest.mark.parametrize("source", [mnist, fashion_mnist, kmnist], ids=lambda m: m.__name__)
def test_idx_sources_load_through_torchvision(source, tmp_path: Path, monkeypatch) -> None:
    name = source.__name__.rsplit(".", 1)[1]
    layout = source.MIRROR_LAYOUT[0]  # e.g. MNIST/raw, as in torchvision's own root
    md5 = write_idx_mirror(tmp_path / "mirror" / layout)
    for file_name, digest in md5.items():
        monkeypatch.setitem(source.FILES, file_name, digest)
    raw = tmp_path / "raw" / name
    fetch_dataset(name, raw, mirror=str(tmp_path / "mirror"))
    arrays = load_raw(name, raw)
    assert arrays.x.shape == (80, 1, 28, 28) and arrays.x.dtype == np.uint8
    assert arrays.test_mask.sum() == 20 and not arrays.test_mask[:60].any()
    meta = write_splits(arrays, tmp_path / "splits", 0.5, 0.15, seed=0)
    assert meta["sizes"] == {"train": 30, "val": 30, "test": 20} and meta["official_test"]


def test_a_wrong_checksum_names_file_and_expected_md5(tmp_path: Path) -> None:
    write_idx_mirror(tmp_path / "mirror" / "mnist")
    with pytest.raises(DataError) as err:
        fetch_dataset("mnist", tmp_path / "raw" / "mnist", mirror=str(tmp_path / "mirror"))
    first = next(iter(mnist.FILES))
    assert first in str(err.value) and mnist.FILES[first] in str(err.value)
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())
    # The mirror's copy is named and left alone (it is the user's).
    assert str(tmp_path / "mirror" / "mnist" / first) in str(err.value)
    assert (tmp_path / "mirror" / "mnist" / first).is_file()


def test_a_corrupt_download_is_dropped_from_the_cache(tmp_path: Path, monkeypatch) -> None:
    """A download with the wrong checksum is deleted from the user cache, so the next run
    fetches it again instead of failing on the same bytes forever."""
    from reprolab.data import fetch

    cache = tmp_path / "cache"
    monkeypatch.setattr(fetch, "CACHE", cache)
    first = next(iter(mnist.FILES))
    cached = cache / "mnist" / first
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"half a download")
    monkeypatch.setattr(mnist, "locate", lambda name: cached if name == first else None)
    with pytest.raises(DataError, match="is deleted: rerun to fetch it again") as err:
        fetch_dataset("mnist", tmp_path / "raw" / "mnist")
    assert str(cached) in str(err.value) and not cached.exists()


def test_a_missing_mirror_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="mirror: folder .*nowhere.* does not exist"):
        fetch_dataset("mnist", tmp_path / "raw", mirror=str(tmp_path / "nowhere"))


def cifar_archive(path: Path, n_per_batch: int = 10) -> dict[str, str]:
    """A cifar-10-python.tar.gz in CIFAR's pickle layout; returns md5 of each member."""
    rng = np.random.default_rng(0)
    members, md5 = {}, {}
    batches = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list]
    for i, name in enumerate(batches):
        batch = {
            "data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            "labels": [(i + j) % 10 for j in range(n_per_batch)],
        }
        members[name] = pickle.dumps(batch)
    members["batches.meta"] = pickle.dumps({"label_names": [f"class{i}" for i in range(10)]})
    with tarfile.open(path, "w:gz") as archive:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
            md5[name] = hashlib.md5(payload).hexdigest()
    return md5


def test_cifar10_loads_through_torchvision(tmp_path: Path, monkeypatch) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    members = cifar_archive(mirror / CIFAR10.filename)
    # torchvision checks each batch against the real files' md5s; point it at ours.
    monkeypatch.setattr(CIFAR10, "train_list", [[n, members[n]] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, members[n]] for n, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": members["batches.meta"]})
    archive_md5 = hashlib.md5((mirror / CIFAR10.filename).read_bytes()).hexdigest()
    monkeypatch.setitem(cifar10.FILES, CIFAR10.filename, archive_md5)
    fetch_dataset("cifar10", tmp_path / "raw", mirror=str(mirror))
    arrays = load_raw("cifar10", tmp_path / "raw")
    assert arrays.x.shape == (60, 3, 32, 32) and arrays.x.dtype == np.uint8
    assert arrays.classes == [f"class{i}" for i in range(10)]
    assert arrays.test_mask.sum() == 10


def write_png_tree(root: Path, classes: dict[str, int], size: int = 12) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_imagefolder_reads_a_png_tree(tmp_path: Path) -> None:
    write_png_tree(tmp_path / "tree", {"ants": 4, "bees": 3})
    (tmp_path / "tree" / "notes.txt").write_text("not an image")
    options = {"path": str(tmp_path / "tree"), "image_size": 16}
    fetch_dataset("imagefolder", tmp_path / "raw", options=options)
    arrays = load_raw("imagefolder", tmp_path / "raw")
    assert arrays.x.shape == (7, 3, 16, 16) and arrays.classes == ["ants", "bees"]
    assert list(arrays.y) == [0, 0, 0, 0, 1, 1, 1] and arrays.test_mask is None
    assert not (tmp_path / "raw" / "notes.txt").exists()


def test_imagefolder_train_val_layout_is_a_published_split(tmp_path: Path) -> None:
    write_png_tree(tmp_path / "tree" / "train", {"ants": 4, "bees": 4})
    write_png_tree(tmp_path / "tree" / "val", {"ants": 2, "bees": 2})
    fetch_dataset(
        "imagefolder", tmp_path / "raw", options={"path": str(tmp_path / "tree"), "image_size": 8}
    )
    arrays = load_raw("imagefolder", tmp_path / "raw")
    assert arrays.test_mask.sum() == 4 and arrays.x.shape == (12, 3, 8, 8)


@pytest.mark.parametrize(
    ("classes", "message"),
    [({"ants": 3}, "1 class"), ({}, "imagefolder")],
    ids=["one-class", "empty"],
)
def test_imagefolder_refuses_unusable_trees(classes, message, tmp_path: Path) -> None:
    write_png_tree(tmp_path / "tree", classes)
    (tmp_path / "tree").mkdir(exist_ok=True)
    with pytest.raises(DataError, match=message):
        fetch_dataset(
            "imagefolder",
            tmp_path / "raw",
            options={"path": str(tmp_path / "tree"), "image_size": 8},
        )
    assert not (tmp_path / "raw").exists()


def test_imagefolder_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="imagefolder.path: folder .*missing.* does not exist"):
        fetch_dataset(
            "imagefolder",
            tmp_path / "raw",
            options={"path": str(tmp_path / "missing"), "image_size": 8},
        )
