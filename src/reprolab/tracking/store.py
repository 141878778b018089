"""Where a SQLite MLflow store keeps its artifacts, and its repair after a copy or a move.

A SQLite store keeps its artifacts in ``mlartifacts/`` beside the database file (the
workspace's ``mlflow.db`` and ``mlartifacts/``; inside ``dvc exp run --temp`` the tracking URI
names the workspace's database, so the temp copy's artifacts go there too). MLflow writes the
artifact root into the store as an absolute URI when an experiment is created, and each run,
logged model and model version then records its own absolute location under it; MLflow has no
API to change any of them (mlflow/mlflow#8226). A workspace copied or moved with its store
(``cp -r``, ``mv``) would thus keep logging into the old folder's ``mlartifacts/``.

``repair_moved_store`` rewrites those locations in the SQLite file: an experiment whose
location is ``<P>/mlartifacts/<name>`` with ``<P>`` another folder than the database's is
moved beside the database, and with it every run, logged model and model version under
``<P>/mlartifacts/`` whose files came along (or are gone from ``<P>``). A row whose files are
still in ``<P>`` alone (the database copied without ``mlartifacts/``) keeps pointing there, so
its artifacts stay readable. Only a local SQLite file is touched, never a server or another
database, and only locations in this ``mlartifacts/`` layout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from reprolab.core.io import file_lock
from reprolab.core.paths import workspace_root

T = TypeVar("T")

ARTIFACTS = "mlartifacts"
# Every column holding an artifact location under an experiment's (absent ones are skipped:
# an older schema has no logged_models; a registry source may be a models:/ URI instead).
LOCATIONS = [
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
]
log = logging.getLogger(__name__)
# What MLflow's SQL store raises when two processes insert the same row at once: it checks,
# then inserts (a dataset, an input, a param or a tag of a run two workspaces share).
_DUPLICATE = re.compile(r"duplicate key|UNIQUE constraint")


def retrying_duplicates(call: Callable[[], T]) -> T:
    """``call()``, again (3 tries in all) when it lost such a race: the row is there by then,
    and MLflow finds it instead of inserting it (mlflow/mlflow#8442)."""
    from mlflow.exceptions import MlflowException

    for attempt in range(3):
        try:
            return call()
        except MlflowException as err:
            if attempt == 2 or not _DUPLICATE.search(str(err)):
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:`` tracking URI; None for any other store."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).resolve()


def artifact_root(uri: str) -> Path | None:
    """Where new experiments keep their artifacts: beside a SQLite database, else (another
    database) in the workspace root, as an explicit absolute location (SQLite stores would
    otherwise default to a cwd-relative folder a temp experiment loses). None for a tracking
    server (``http(s)://``): the server chooses, e.g. ``mlflow-artifacts:/<experiment id>``
    where it proxies them (``--serve-artifacts``), so that every workspace that shares it,
    on any machine, logs and reads through it, never into one workspace's folder."""
    if uri.startswith(("http://", "https://")):
        return None
    database = sqlite_file(uri)
    return (workspace_root() if database is None else database.parent) / ARTIFACTS


def _old_root(location: str, root: Path) -> str | None:
    """``file://<P>/mlartifacts/`` of an experiment location in this layout whose ``<P>``
    is not the database's folder; None otherwise (already beside it, or not this layout)."""
    if not location.startswith("file://"):
        return None
    cut = location.rfind(f"/{ARTIFACTS}/")
    if cut < 0 or not location[cut + len(ARTIFACTS) + 2 :]:
        return None
    prefix = location[: cut + len(ARTIFACTS) + 2]
    if prefix == root.as_uri() + "/":
        return None
    old = _local(prefix)
    with contextlib.suppress(OSError):  # the same folder spelled another way (a symlink)
        if old.exists() and root.exists() and os.path.samefile(old, root):
            return None
    return prefix


def _local(uri: str) -> Path:
    return Path(url2pathname(urlparse(uri).path))


def _old_roots(db: sqlite3.Connection, root: Path) -> set[str]:
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    if "experiments" not in tables:
        return set()
    rows = db.execute("SELECT artifact_location FROM experiments").fetchall()
    return {old for (location,) in rows if location and (old := _old_root(location, root))}


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _rewrite(db: sqlite3.Connection, old: str, root: Path) -> int:
    """Point what lies under ``old`` at ``root``; returns how many rows changed."""
    new = root.as_uri() + "/"
    n = len(old)
    changed = db.execute(
        "UPDATE experiments SET artifact_location = ? || substr(artifact_location, ?)"
        " WHERE substr(artifact_location, 1, ?) = ?",
        (new, n + 1, n, old),
    ).rowcount
    for table, column in LOCATIONS:
        if column not in _columns(db, table):
            continue
        rows = db.execute(
            f"SELECT rowid, {column} FROM {table} WHERE substr({column}, 1, ?) = ?",
            (n, old),
        ).fetchall()
        for rowid, value in rows:
            tail = unquote(value[n:])
            # Files left behind in the old folder alone stay readable where they are.
            if (root / tail).exists() or not (_local(old) / tail).exists():
                db.execute(
                    f"UPDATE {table} SET {column} = ? WHERE rowid = ?",
                    (new + value[n:], rowid),
                )
                changed += 1
    return changed


def _repair(database: Path, root: Path) -> tuple[list[str], int]:
    # Autocommit, so that BEGIN IMMEDIATE below opens the one write transaction: processes
    # that repair together serialize on it, and the later ones find nothing left to do.
    with contextlib.closing(sqlite3.connect(database, timeout=60, isolation_level=None)) as db:
        if not _old_roots(db, root):
            return [], 0
        db.execute("BEGIN IMMEDIATE")
        try:
            found = sorted(_old_roots(db, root))
            changed = sum(_rewrite(db, old, root) for old in found)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return found, changed


def repair_moved_store(uri: str) -> list[str]:
    """Move the artifact locations of a copied or moved SQLite store beside its database
    (module docstring); returns the old roots it found (empty: nothing to do, the usual
    case, one read). Other stores, and a database not created yet, are left alone."""
    database = sqlite_file(uri)
    if database is None or not database.is_file():
        return []
    root = database.parent / ARTIFACTS
    try:
        found, changed = _repair(database, root)
    except sqlite3.Error as err:  # read-only, locked past the timeout: the store works as is
        log.warning("%s: cannot repair its artifact locations (%s)", database, err)
        return []
    if found:
        log.warning(
            "%s: artifact locations under %s (another folder: a copied or moved workspace) "
            "now point beside it, to %s (%d rows)",
            database,
            ", ".join(found),
            root.as_uri() + "/",
            changed,
        )
    return found


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else an absolute SQLite store in the workspace root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workspace_root() / 'mlflow.db'}"


def open_store() -> str:
    """Point MLflow at ``tracking_uri()``; a SQLite store copied or moved with its workspace
    is first repaired to keep its artifacts beside it (store.repair_moved_store)."""
    import mlflow

    uri = tracking_uri()
    repair_moved_store(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def store_lock() -> contextlib.AbstractContextManager:
    """Between this machine's processes using the SQLite store (a no-op for other stores)."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return file_lock(uri.removeprefix("sqlite:///") + ".lock")
    return contextlib.nullcontext()
