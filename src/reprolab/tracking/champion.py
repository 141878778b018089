"""The ``champion`` alias: per dataset and model group, the registered version of the best
network of the workspace's result.

Who may move it:
- never `reprolab verify`, nor a temp or queued `dvc exp run` (a copy, not the workspace);
- on a tracking server shared by several workspaces, only forward: a workspace takes the alias
  from a version that is its own earlier result, a result committed in its HEAD's history
  (its weights' md5 is in a `dvc.lock` there), or a clean result of a commit HEAD descends
  from; never from another workspace's newer, diverged, unfetched or uncommitted result.
  Versions record where they were made (``workspace``: host and folder, ``git_dirty``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from reprolab.core.paths import workspace_root
from reprolab.tracking.models import registered_name, registered_version
from reprolab.tracking.runs import verifying
from reprolab.tracking.store import open_store, store_lock
from reprolab.tracking.tags import git_sha, workspace_id

CHAMPION = "champion"


def champion_refused() -> str | None:
    """Why this run may not move ``champion`` (None: it may). The champion is the workspace's
    result: a `dvc exp run --temp` or queued experiment runs in a copy (its cwd is not the
    workspace root DVC_ROOT names) and is never applied to the workspace by itself."""
    if verifying():
        return "a `reprolab verify` rerun"
    if Path.cwd().resolve() != workspace_root():
        return f"a temp or queued experiment (runs in {Path.cwd()}, not the workspace)"
    return None


def _git(*args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None


def _committed_here(weights_md5: str) -> bool:
    """A `dvc.lock` in HEAD's history records these weights (a result this clone holds)."""
    found = _git("log", "-1", "--format=%H", f"-S{weights_md5}", "HEAD", "--", "dvc.lock")
    return bool(weights_md5) and found is not None and bool(found.stdout.strip())


def _held(holder: Any, head: str) -> str | None:
    """Why the alias must stay on ``holder`` (a model version; None: it may move)."""
    tags = holder.tags
    theirs = tags.get("git_sha", "unknown")
    if "unknown" in (theirs, head):
        return None  # outside git: nothing to order by
    if "workspace" not in tags:  # registered before versions said where: by commit alone
        if theirs == head:
            return None
    elif tags["workspace"] == workspace_id() or _committed_here(tags.get("weights_md5", "")):
        return None
    ancestor = _git("merge-base", "--is-ancestor", theirs, head)
    code = 128 if ancestor is None else ancestor.returncode
    clean = tags.get("git_dirty", "false") == "false"
    if code == 0 and theirs != head and clean:
        return None  # a clean result of a commit this one descends from
    if code == 0 and theirs == head:
        what = "another workspace's result of this commit, which HEAD's dvc.lock does not hold"
    elif code == 0:
        what = f"an uncommitted result of commit {theirs[:12]}"
    elif code == 1:
        what = f"a result of commit {theirs[:12]}, not an ancestor of HEAD"
    else:
        shallow = _git("rev-parse", "--is-shallow-repository")
        what = f"a result of commit {theirs[:12]}, which this clone does not have" + (
            " (a shallow clone: `git fetch --unshallow`)"
            if shallow is not None and shallow.stdout.strip() == "true"
            else ""
        )
    where = tags.get("workspace", "another workspace")
    return (
        f"champion stays on models:/{holder.name}/{holder.version}: {what} (made in {where}; "
        f"HEAD {head[:12]}); `git pull` its commit and rerun `dvc repro report`, or move the "
        "alias by hand in the MLflow UI"
    )


def _alias_holder(client: MlflowClient, name: str) -> Any | None:
    """The version of ``name`` holding the champion alias; None when ``name`` is not
    registered or has no such alias (any other store fault is raised, not taken for
    "none": the check that guards the alias must not be skipped)."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException as err:
        no_alias = err.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(err)
        if err.error_code == "RESOURCE_DOES_NOT_EXIST" or no_alias:
            return None
        raise


def _group_holders(client: MlflowClient, dataset: str, group: str | None) -> list[str]:
    """The registered models of ``dataset`` whose champion version is of model group
    ``group`` (its ``group`` tag): a model since taken out of params.yaml keeps no alias."""
    if group is None:
        return []
    found = client.search_registered_models(filter_string=f"name LIKE '{dataset}-%'")
    return [
        m.name
        for m in found
        if CHAMPION in (m.aliases or {})
        and client.get_model_version(m.name, m.aliases[CHAMPION]).tags.get("group") == group
    ]


def promote_champion(
    dataset: str, best: str, weights_md5: str, models: Iterable[str], group: str | None = None
) -> tuple[str | None, str | None]:
    """Alias ``champion`` the registered version of ``best`` whose weights are ``weights_md5``
    (the model.pt that DVC tracks), and take the alias off the other models of ``models``
    (and of ``group``, models since removed from params.yaml included); unless the version
    holding it is not this workspace's to take (module docstring).

    Returns (the version's ``models:/`` URI, why the alias stayed where it is). The URI is None
    when the store holds no such version (a fresh clone whose MLflow store never saw that
    training run). The check and the move are one step under the store's lock for a SQLite
    store; a tracking server has no such lock, so there two reports at once may both move it.
    """
    open_store()
    client = MlflowClient()
    name = registered_name(dataset, best)
    names = [registered_name(dataset, m) for m in models]
    with store_lock():
        names += [n for n in _group_holders(client, dataset, group) if n not in names]
        version = registered_version(client, name, weights_md5)
        if version is None:
            return None, None
        holders = {n: h for n in names if (h := _alias_holder(client, n)) is not None}
        for holder in holders.values():
            if (holder.name, str(holder.version)) == (name, version):
                continue
            held = _held(holder, git_sha())
            if held:
                return f"models:/{name}/{version}", held
        client.set_registered_model_alias(name, CHAMPION, version)
        for other_name in holders.keys() - {name}:  # read under the lock: still theirs
            client.delete_registered_model_alias(other_name, CHAMPION)
    return f"models:/{name}/{version}", None
