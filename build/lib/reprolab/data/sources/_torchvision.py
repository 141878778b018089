"""Shared code of the sources backed by torchvision's dataset classes.

The original archives are what DVC tracks (data/raw/<dataset>/, md5-verified); ``load``
unpacks them into a temporary root in torchvision's own layout and lets torchvision's class
parse them, so the parsing is torchvision's, not ours.
"""

from __future__ import annotations

import gzip
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from reprolab.data.fetch import Arrays

CACHE = Path.home() / ".cache" / "reprolab"


def download(urls: list[str], file_name: str, md5: str, dataset: str) -> Path | None:
    """Download into the user cache from the dataset's own URLs; None when none answers."""
    from torchvision.datasets.utils import download_url

    folder = CACHE / dataset
    if (folder / file_name).is_file():
        return folder / file_name
    for url in urls:
        try:
            download_url(url, str(folder), filename=file_name, md5=md5)
        except Exception:  # offline, moved, refused: try the next URL, then give up
            continue
        if (folder / file_name).is_file():
            return folder / file_name
    return None


def idx_source(dataset_class: type, dataset: str) -> tuple[dict[str, str], Callable, Callable]:
    """(FILES, locate, load) of an MNIST-family source: one line per dataset module."""
    files = dict(dataset_class.resources)

    def locate(file_name: str) -> Path | None:
        urls = [f"{mirror}{file_name}" for mirror in dataset_class.mirrors]
        return download(urls, file_name, files[file_name], dataset)

    def load(raw_dir: Path) -> Arrays:
        return load_idx(raw_dir, dataset_class)

    return files, locate, load


def load_idx(raw_dir: Path, dataset_class: type) -> Arrays:
    """MNIST-family: gunzip the IDX files into <tmp>/<Class>/raw/ and parse both splits."""
    with tempfile.TemporaryDirectory() as root:
        target = Path(root) / dataset_class.__name__ / "raw"
        target.mkdir(parents=True)
        for file_name, _ in dataset_class.resources:
            with (
                gzip.open(raw_dir / file_name) as src,
                open(target / Path(file_name).stem, "wb") as out,
            ):
                shutil.copyfileobj(src, out)
        train = dataset_class(root, train=True, download=False)
        test = dataset_class(root, train=False, download=False)
        return _join(
            train.data.numpy()[:, None],
            train.targets.numpy(),
            test.data.numpy()[:, None],
            test.targets.numpy(),
            list(train.classes),
        )


def load_cifar(raw_dir: Path, dataset_class: type) -> Arrays:
    """CIFAR: extract the python-pickle archive and parse both splits with torchvision."""
    with tempfile.TemporaryDirectory() as root:
        with tarfile.open(raw_dir / dataset_class.filename) as archive:
            archive.extractall(root, filter="data")
        train = dataset_class(root, train=True, download=False)
        test = dataset_class(root, train=False, download=False)
        return _join(
            train.data.transpose(0, 3, 1, 2),
            np.asarray(train.targets),
            test.data.transpose(0, 3, 1, 2),
            np.asarray(test.targets),
            list(train.classes),
        )


def _join(x_train, y_train, x_test, y_test, classes: list[str]) -> Arrays:
    """Both published splits in one array; ``test_mask`` marks the published test rows."""
    x = np.ascontiguousarray(np.concatenate([x_train, x_test]), dtype=np.uint8)
    y = np.concatenate([y_train, y_test]).astype(np.int64)
    mask = np.zeros(len(y), dtype=bool)
    mask[len(y_train) :] = True
    return Arrays(x=x, y=y, classes=classes, test_mask=mask)
