"""CIFAR-10: 60k 32x32 colour images in 10 classes (50k train, 10k test), parsed by
torchvision.datasets.CIFAR10 from the original python-pickle archive."""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets import CIFAR10

from reprolab.data.fetch import Arrays
from reprolab.data.sources._torchvision import download, load_cifar

FILES = {CIFAR10.filename: CIFAR10.tgz_md5}


def locate(file_name: str) -> Path | None:
    return download([CIFAR10.url], file_name, FILES[file_name], "cifar10")


def load(raw_dir: Path) -> Arrays:
    return load_cifar(raw_dir, CIFAR10)
