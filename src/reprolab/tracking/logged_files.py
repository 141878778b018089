"""Plain files logged with an MLflow model, fetched without loading the model: nothing of
the version is unpickled, imported or run.

A pyfunc's ``artifacts={...}`` are copied to ``<model>/artifacts/<name>`` and listed in the
python_function flavour's ``artifacts`` entry of MLmodel; a flavour's ``extra_files=[...]``
(the pytorch flavour's) to ``<model>/extra_files/<name>``, listed in its ``extra_files``
entry (MLmodel is read with yaml.safe_load by ``get_model_info``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from reprolab.core.errors import CheckpointError

EXTRA_DIR = "extra_files"
ARTIFACTS_DIR = "artifacts"


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def download_extra_files(uri: str, names: Iterable[str], dest: Path) -> None:
    """Download ``artifacts/<name>`` (or ``extra_files/<name>``) of the model at ``uri`` into
    ``dest/<name>`` for each name. A model without them (a pickled module, a pyfunc loader
    module, a version logged before they were) raises CheckpointError saying so."""
    import mlflow

    from reprolab.tracking.store import open_store, sqlite_file, tracking_uri

    # MLflow creates a SQLite store it is pointed at: run outside the workspace, that would
    # leave an empty mlflow.db in the cwd and then find no model in it. Read only a store
    # that exists (the workspace's, found from the cwd up, or MLFLOW_TRACKING_URI's).
    database = sqlite_file(tracking_uri())
    if database is not None and not database.is_file():
        raise CheckpointError(
            f"{uri}: no MLflow tracking store at {database} (nothing was created): run "
            "`reprolab predict` inside the workspace that trained it, or set "
            "MLFLOW_TRACKING_URI=sqlite:///<workspace>/mlflow.db (or a server's URL); or give "
            "a model folder (--model models/<name>)"
        )
    open_store()  # a moved workspace's versions read from its own mlartifacts/
    try:
        info = mlflow.models.get_model_info(uri)  # the MLmodel file alone
    except Exception as err:  # MlflowException, OSError: unknown name, alias or path
        raise CheckpointError(
            f"{uri}: cannot find this MLflow model ({_first_line(err)}) in the tracking store "
            f"{mlflow.get_tracking_uri()}; a registry is per store (a clone's mlflow.db starts "
            "empty): set MLFLOW_TRACKING_URI to the store that holds it, or give a model "
            "folder (--model models/<name>, after `dvc pull`)"
        ) from None
    if (info.metadata or {}).get("task") == "generative":
        raise CheckpointError(f"{uri}: a generator; predict takes classifiers and regressors")
    listed = logged_files(info.flavors)
    wanted = set()
    for name in names:
        found = [f"{d}/{name}" for d in (ARTIFACTS_DIR, EXTRA_DIR) if f"{d}/{name}" in listed]
        if not found:
            wanted = set()
            break
        wanted.add(found[0])
    if not wanted:
        raise CheckpointError(
            f"{uri}: this version carries no state dict ({' + '.join(sorted(names))}), only "
            f"flavours ({', '.join(sorted(info.flavors)) or 'none'}) whose loading would run "
            "code shipped with it, which reprolab never does; register it again with "
            "`dvc repro train@<model>`, or predict from its DVC folder (--model models/<model>)"
        )
    for path in sorted(wanted):
        fetched = dest / "download"
        try:
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{uri.rstrip('/')}/{path}", dst_path=str(fetched)
            )
        except Exception as err:  # MlflowException, OSError
            raise CheckpointError(f"{uri}: cannot download {path} ({_first_line(err)})") from None
        found = [p for p in fetched.rglob(Path(path).name) if p.is_file() and not p.is_symlink()]
        if len(found) != 1:
            raise CheckpointError(f"{uri}: {path} did not download as one plain file")
        found[0].replace(dest / Path(path).name)


def logged_files(flavors: dict) -> set[str]:
    """The paths (``extra_files/<name>``, ``artifacts/<name>``) the flavours of an MLmodel
    list as plain files logged with it."""
    listed = set()
    for flavor in flavors.values():
        if not isinstance(flavor, dict):
            continue
        for entry in flavor.get(EXTRA_DIR) or []:
            listed.add(str(entry.get("path")) if isinstance(entry, dict) else "")
        artifacts = flavor.get(ARTIFACTS_DIR)
        for entry in artifacts.values() if isinstance(artifacts, dict) else []:
            listed.add(str(entry.get("path")) if isinstance(entry, dict) else "")
    return listed
