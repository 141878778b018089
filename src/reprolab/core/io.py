"""Atomic file writes and checksums: a killed stage never leaves a half-written output."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process umask (read by setting it, then restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o666 & ~_umask())  # mkstemp makes 0600; an output is shared as usual
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temp dir beside ``path``; it replaces ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_json(
    path: Path, stage: str = "", keys: tuple[str, ...] = (), fault: type[Exception] | None = None
) -> dict:
    """A JSON object a stage wrote, holding ``keys``: missing, edited into something else or
    truncated, it is one line naming the file and the stage that writes it (a ReprolabError,
    ``fault`` or CheckpointError), not a traceback."""
    from reprolab.core.errors import CheckpointError

    error = fault or CheckpointError
    run, rerun = (f"dvc repro {stage}", f"dvc repro -f {stage}") if stage else ("dvc repro",) * 2
    if not path.is_file():
        raise error(f"{path}: not found; run `{run}` (or `dvc pull`)")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise error(f"{path}: not valid JSON ({err}); rerun `{rerun}`") from None
    if not isinstance(data, dict) or any(k not in data for k in keys):
        wanted = f"an object with {', '.join(keys)}" if keys else "an object"
        raise error(f"{path}: not {wanted}; rerun `{rerun}`")
    return data


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Sorted keys and a fixed layout, so equal content gives equal bytes."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_tsv(path: str | os.PathLike[str], rows: list[dict[str, Any]], sep: str = "\t") -> None:
    """A table with a header row; a cell holding the separator, a quote or a newline (a class
    folder named "a,b") is quoted the way csv readers (DVC's plots included) expect."""
    if not rows:
        raise ValueError(f"{path}: no rows to write")
    columns = list(rows[0])
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=sep, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_cell(row[c]) for c in columns] for row in rows)
    write_text(path, buffer.getvalue())


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def md5_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    return hash_file(path, "md5", chunk)


def hash_file(path: str | os.PathLike[str], algorithm: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_checksum(path: str | os.PathLike[str], expected: str) -> str:
    """The checksum of ``path`` in the form of ``expected``: ``sha256:<hex>`` or an md5 hex."""
    algorithm, _, _ = expected.rpartition(":")
    digest = hash_file(path, algorithm or "md5")
    return f"{algorithm}:{digest}" if algorithm else digest


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """An exclusive lock between the processes of this machine (flock on ``path``); the
    kernel releases it when a holder dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
