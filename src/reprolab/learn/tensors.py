"""Splits as tensors on the training device; batches are taken by index, no DataLoader.

A split whose inputs fit ``core.npz.memory_budget`` is read whole onto the device; a
larger one stays in its file (``DiskRows``) and each batch's rows are read when it is taken.
The rows, hence every result, are the same bits either way.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reprolab.core.errors import DataError
from reprolab.core.io import read_json
from reprolab.core.npz import Member, chunk_rows, memory_budget, open_npz


class DiskRows:
    """A split's inputs left in their file: the rows a batch asks for are read then, so memory
    holds a batch, never the split. It answers what the tasks ask of ``TensorData.x``: len,
    shape, dim, dtype, device, ``index_select(0, index)``, ``x[rows]``, ``split(n)``, ``max()``."""

    def __init__(self, member: Member, device: torch.device, rows: np.ndarray | None = None):
        self.member, self.device, self.rows = member, device, rows

    def __len__(self) -> int:
        return len(self.member) if self.rows is None else len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.member.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return torch.from_numpy(np.empty(0, self.member.dtype)).dtype

    def dim(self) -> int:
        return len(self.member.shape)

    def index_select(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        if dim != 0:
            raise ValueError(f"rows on disk are selected along dim 0, not {dim}")
        return self._read(index.cpu().numpy())

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            return self._read(np.arange(len(self))[key])
        return self._read(torch.as_tensor(key).cpu().numpy())

    def max(self) -> torch.Tensor:
        return max(rows.max() for rows in self.split(chunk_rows(self.member.row_bytes)))

    def split(self, size: int) -> Iterator[torch.Tensor]:
        """The rows in order, ``size`` at a time (``Tensor.split`` along dim 0)."""
        for start in range(0, len(self), size):
            yield self[start : start + size]

    def subset(self, index: np.ndarray) -> DiskRows:
        """Rows ``index`` of these, still on disk."""
        return DiskRows(self.member, self.device, self._file_rows(index))

    def _file_rows(self, index: np.ndarray) -> np.ndarray:
        return index if self.rows is None else self.rows[index]

    def _read(self, index: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.member.take(self._file_rows(index))).to(self.device)


@dataclass
class TensorData:
    """Inputs kept compact (uint8 images stay uint8) and cast per batch on the device."""

    x: torch.Tensor | DiskRows
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
    keep = np.sort(keep)
    index = torch.from_numpy(keep).to(data.y.device)
    x = data.x.subset(keep) if isinstance(data.x, DiskRows) else data.x.index_select(0, index)
    return TensorData(x=x, y=data.y.index_select(0, index))


def _missing(path: Path) -> DataError:
    kind = path.parent.name
    return DataError(f"{path}: not found; run `dvc repro split@{kind}` first")


def load_split(path: Path, device: torch.device) -> TensorData:
    """A split file's rows: inputs on the device, or left on disk when larger than the
    memory budget (``core.npz.memory_budget``); labels on the device."""
    if not path.is_file():
        raise _missing(path)
    try:
        members = open_npz(path)
        x, y = members["x"], torch.from_numpy(members["y"].load()).to(device)
        if x.nbytes <= memory_budget():
            return TensorData(x=torch.from_numpy(x.load()).to(device), y=y)
    # A truncated or overwritten file: zipfile's, numpy's or our own checks' errors.
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        reason = (str(err).strip().splitlines() or [""])[0][:120]
        raise DataError(
            f"{path}: unreadable ({type(err).__name__}: {reason}); rerun `dvc repro split@"
            f"{path.parent.name}` (or `dvc checkout` it)"
        ) from None
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} inputs but {len(y)} labels; rerun `dvc repro split`")
    return TensorData(x=DiskRows(x, device), y=y)


def load_meta(split_dir: Path) -> dict:
    return read_json(split_dir / "meta.json", f"split@{split_dir.name}", fault=DataError)
