"""Splits as tensors on the training device; batches are taken by index, no DataLoader."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reprolab.core.errors import DataError
from reprolab.core.io import read_json


@dataclass
class TensorData:
    """Inputs kept compact (uint8 images stay uint8) and cast per batch on the device."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # index_select copies whole rows; x[index] (advanced indexing) is several times slower
        # on CPU, most of all for uint8 rows (bench/throughput.py).
        return self.x.index_select(0, index).float(), self.y.index_select(0, index)


def subsample(data: TensorData, rows: int | None, seed: int, stratify: bool) -> TensorData:
    """At most ``rows`` rows of ``data``, drawn with ``seed`` (per class in proportion when
    ``stratify``), kept in their original order; all of it when ``rows`` is None or larger."""
    n = len(data)
    if rows is None or rows >= n:
        return data
    from sklearn.model_selection import train_test_split

    labels = data.y.cpu().numpy() if stratify else None
    keep, _ = train_test_split(np.arange(n), train_size=rows, random_state=seed, stratify=labels)
    index = torch.from_numpy(np.sort(keep)).to(data.y.device)
    return TensorData(x=data.x.index_select(0, index), y=data.y.index_select(0, index))


def _missing(path: Path) -> DataError:
    kind = path.parent.name
    return DataError(f"{path}: not found; run `dvc repro split@{kind}` first")


def load_split(path: Path, device: torch.device) -> TensorData:
    if not path.is_file():
        raise _missing(path)
    try:
        with np.load(path) as data:
            x, y = data["x"], data["y"]
    # A truncated or overwritten file: numpy raises zipfile's, zlib's or its own errors.
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        reason = (str(err).strip().splitlines() or [""])[0][:120]
        raise DataError(
            f"{path}: unreadable ({type(err).__name__}: {reason}); rerun `dvc repro split@"
            f"{path.parent.name}` (or `dvc checkout` it)"
        ) from None
    return TensorData(x=torch.from_numpy(x).to(device), y=torch.from_numpy(y).to(device))


def load_meta(split_dir: Path) -> dict:
    return read_json(split_dir / "meta.json", f"split@{split_dir.name}", fault=DataError)
