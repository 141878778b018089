"""Where the MLflow UI shows this project: the runs page of each `reprolab-*` experiment.

MLflow 3's UI opens on its GenAI pages (traces, prompts); `make ui` prints these addresses
before it starts the server. The SQLite file is only read, never created: a workspace with no
store yet prints a line saying so.

    python -m reprolab.tracking.pages <mlflow.db> <UI base URL>
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from pathlib import Path

# The experiment kind MLflow 3's UI reads to open an experiment on its runs, not its traces.
KIND_TAG = "mlflow.experimentKind"
KIND = "custom_model_development"


def runs_pages(database: Path, base_url: str) -> list[tuple[str, str]]:
    """(experiment name, runs page URL) of each active ``reprolab-*`` experiment, by name."""
    if not database.is_file():
        return []
    uri = f"{database.resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        rows = db.execute(
            "SELECT experiment_id, name FROM experiments"
            " WHERE lifecycle_stage = 'active' AND name LIKE 'reprolab-%' ORDER BY name"
        ).fetchall()
    base = base_url.rstrip("/")
    return [(name, f"{base}/#/experiments/{eid}/runs") for eid, name in rows]


def main(argv: list[str]) -> int:
    database, base_url = Path(argv[0]), argv[1]
    pages = runs_pages(database, base_url)
    if not pages:
        print(f"no reprolab experiment in {database} yet (`make repro` logs there); {base_url}")
    for name, url in pages:
        print(f"{name}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
