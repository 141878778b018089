"""How splits are stored and read: np.savez's uncompressed .npz, never needing to be loaded whole.

A split file is a zip of stored (uncompressed) ``.npy`` members, byte for byte what
``np.savez`` writes, so its DVC hash is the same however it was written. A stored member
sits at a fixed offset in the file, so its rows can be read where they lie: ``open_npz``
finds each member's array (``Member``), whose ``take`` copies chosen rows with positional
reads. No page of the file stays mapped into the process, so a stage's resident memory
does not grow with the split (the OS page cache keeps what fits). ``NpzWriter`` writes a
member row chunk by row chunk, so a split is written without holding it whole.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reprolab.core.errors import DataError

# Rows read or written at once when a split is streamed: 32 MiB, whatever a row's size.
CHUNK_BYTES = 32 << 20
# A split's inputs up to this size are read into memory whole; larger ones stay in their
# file and are read a batch at a time. Either way every result is the same, bit for bit:
# this only trades memory for speed, so it is an environment setting, not a param.
MEMORY_ENV = "REPROLAB_SPLIT_MEMORY_MB"
DEFAULT_MEMORY_MB = 256


def memory_budget() -> int:
    """Bytes of a split's inputs that may be held in memory (``REPROLAB_SPLIT_MEMORY_MB``)."""
    given = os.environ.get(MEMORY_ENV, str(DEFAULT_MEMORY_MB))
    try:
        megabytes = float(given)
    except ValueError:
        megabytes = -1.0
    if not megabytes >= 0:
        raise DataError(f"{MEMORY_ENV}={given!r}: expected a number of MiB >= 0 (0: stream)")
    return int(megabytes * (1 << 20))


_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # a zip entry's local file header (30 bytes)
_LOCAL_SIGNATURE = b"PK\x03\x04"


def chunk_rows(row_bytes: int) -> int:
    """How many rows of ``row_bytes`` each make one streaming chunk (at least one)."""
    return max(1, CHUNK_BYTES // max(1, row_bytes))


@dataclass(frozen=True)
class Member:
    """One ``.npy`` member of a stored .npz: an array of ``shape`` at byte ``offset``."""

    path: Path
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]
    crc: int  # the zip's CRC-32 of the whole member (.npy header and data)
    header_bytes: int  # the member's .npy header, before the data

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return len(self) * self.row_bytes

    def load(self) -> np.ndarray:
        """The whole array in memory, its CRC checked (as np.load checks it)."""
        out = self.rows(0, len(self))
        with open(self.path, "rb") as f:
            f.seek(self.offset - self.header_bytes)
            crc = zlib.crc32(f.read(self.header_bytes))
        if zlib.crc32(memoryview(out).cast("B"), crc) != self.crc:
            raise zipfile.BadZipFile(f"Bad CRC-32 for an array of {self.path.name}")
        return out

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop``, read in one go."""
        out = np.empty((max(0, stop - start), *self.shape[1:]), self.dtype)
        with open(self.path, "rb", buffering=0) as f:
            self._read_into(f.fileno(), out, start)
        return out

    def take(self, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` in that order (``array[index]``): a run of consecutive rows in one
        read, shuffled rows one read each, straight into place (from the page cache, a read
        of a row costs about as much as copying it; bench/out_of_core.py)."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if len(index) and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"{self.path}: row index out of range for {len(self)} rows")
        if len(index) and index[-1] - index[0] == len(index) - 1 and (np.diff(index) == 1).all():
            return self.rows(int(index[0]), int(index[-1]) + 1)
        out = np.empty((len(index), *self.shape[1:]), self.dtype)
        with open(self.path, "rb", buffering=0) as f:
            fd, view, size = f.fileno(), memoryview(out).cast("B"), self.row_bytes
            for i, row in enumerate(index.tolist()):
                if (
                    os.preadv(fd, [view[i * size : (i + 1) * size]], self.offset + row * size)
                    < size
                ):
                    raise EOFError(f"{self.path.name} ends in the middle of an array")
        return out

    def __getitem__(self, index) -> np.ndarray:
        """``array[index]`` for an index array or a slice of rows, read from the file."""
        if isinstance(index, slice):
            return self.take(np.arange(len(self))[index])
        return self.take(index)

    def chunks(self) -> Iterator[np.ndarray]:
        """The rows in order, ``chunk_rows`` at a time."""
        step = chunk_rows(self.row_bytes)
        for start in range(0, len(self), step):
            yield self.rows(start, min(start + step, len(self)))

    def _read_into(self, fd: int, out: np.ndarray, first_row: int) -> None:
        view = memoryview(out).cast("B")
        position, done = self.offset + first_row * self.row_bytes, 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], position + done)
            if got == 0:
                raise EOFError(f"{self.path.name} ends in the middle of an array")
            done += got


def row_chunks(x: np.ndarray | Member) -> Iterator[np.ndarray]:
    """The rows of ``x`` (an array, or a split's member read from its file) in order,
    ``chunk_rows`` at a time: the same chunks either way, whatever the memory budget."""
    if isinstance(x, Member):
        yield from x.chunks()
        return
    step = chunk_rows(x.itemsize * int(np.prod(x.shape[1:], dtype=np.int64)))
    for start in range(0, len(x), step):
        yield x[start : start + step]


def open_npz(path: Path) -> dict[str, Member]:
    """Each member (name without .npy) of an uncompressed .npz, its header and size checked.
    A damaged file raises the error that np.load would (the caller words it for the user)."""
    with open(path, "rb") as f, zipfile.ZipFile(f) as archive:
        size = os.fstat(f.fileno()).st_size
        members = {}
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"member {info.filename} is compressed; expected np.savez's")
            f.seek(info.header_offset)
            fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
            if fields[0] != _LOCAL_SIGNATURE:
                raise zipfile.BadZipFile(f"bad local header for {info.filename}")
            f.seek(info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1])
            start = f.tell()
            version = np.lib.format.read_magic(f)
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = read_header(f)
            if fortran or dtype.hasobject or not shape:
                raise ValueError(f"member {info.filename}: not a C-order array of rows")
            member = Member(Path(path), f.tell(), dtype, shape, info.CRC, f.tell() - start)
            if member.header_bytes + member.nbytes != info.file_size or (
                member.offset + member.nbytes > size
            ):
                raise EOFError(f"member {info.filename} is truncated")
            members[info.filename.removesuffix(".npy")] = member
    return members


def _write_npy_header(fid, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """The header np.save writes for a C-order array (version 1.0, or 2.0 when too long)."""
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": tuple(int(n) for n in shape),
    }
    try:
        np.lib.format.write_array_header_1_0(fid, header)
    except ValueError:
        np.lib.format.write_array_header_2_0(fid, header)


class NpzWriter:
    """Writes the bytes np.savez(file, **arrays) would, one member at a time, a member's rows
    in chunks: ``with writer.member("x", shape, dtype) as write: write(rows)...``."""

    def __init__(self, file) -> None:
        # np.savez's own zip: stored members, zip64 allowed and forced per member (gh-10776).
        self._zip = zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True)

    @contextmanager
    def member(self, name: str, shape: tuple[int, ...], dtype) -> Iterator:
        dtype, written = np.dtype(dtype), [0]
        with self._zip.open(f"{name}.npy", "w", force_zip64=True) as fid:
            _write_npy_header(fid, shape, dtype)

            def write(rows: np.ndarray) -> None:
                rows = np.ascontiguousarray(rows, dtype=dtype)
                if rows.shape[1:] != tuple(shape[1:]):
                    raise ValueError(f"{name}: rows of shape {rows.shape[1:]}, not {shape[1:]}")
                fid.write(memoryview(rows).cast("B"))
                written[0] += len(rows)

            yield write
        if written[0] != shape[0]:
            raise ValueError(f"{name}: {written[0]} rows written, {shape[0]} declared")

    def array(self, name: str, values: np.ndarray) -> None:
        """A member written whole, exactly as np.savez writes it (any memory layout)."""
        with self._zip.open(f"{name}.npy", "w", force_zip64=True) as fid:
            np.lib.format.write_array(fid, np.asanyarray(values))

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
