"""What every run of a stage is tagged with (where and from what commit it ran, the numerics
in force, the splits it read: their md5 and path), and what a model's parent run is named."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from reprolab.core import numerics
from reprolab.core.io import md5_file
from reprolab.core.paths import workspace_root
from reprolab.core.schema import Params
from reprolab.tracking.lineage import MD5_TAG, PATH_TAG, code_diff


def workspace_id() -> str:
    """Where a result is made: this host and the workspace folder (a model version's tag)."""
    return f"{socket.gethostname()}:{workspace_root()}"


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'prefix.a.b': 1}, for logging nested params."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), sub))
        return out
    return {prefix: value}


def stage_tags(
    device: str, params: Params, data: Iterable[tuple[str, str, str]] = ()
) -> dict[str, str]:
    """Tags of every run a stage logs: git sha, device, threads, the numerics in force
    (core.numerics: mode, torch build, CPU capability), the md5 of the dvc.lock it ran under,
    and for each split read (split, path, md5) its md5 and path (lineage.dataset_inputs)."""
    sha = git_sha()
    tags = {
        "mlflow.source.git.commit": sha,
        "reprolab.git_sha": sha,
        "reprolab.device": device,
        "reprolab.threads": str(params.threads),
        **{f"reprolab.{k}": v for k, v in numerics.describe(params.numerics).items()},
    }
    lock = Path("dvc.lock")
    if lock.is_file():
        tags["reprolab.dvc_lock_md5"] = md5_file(lock)
    for split, path, md5 in data:
        tags[f"{MD5_TAG}{split}"] = md5
        tags[f"{PATH_TAG}{split}"] = path
    return tags


def parent_run_name(model: str, study: str, tags: Mapping[str, str]) -> str:
    """The name the MLflow UI shows for a model's parent run, so reruns and experiments tell
    apart: ``<model>@<experiment>`` under `dvc exp run` (DVC sets DVC_EXP_NAME, also for temp
    and queued runs), else ``<model>@<short commit>``, with ``-dirty`` when code or config
    differ from it (lineage.code_diff, read once per process anyway), else outside git
    ``<model>@<study fingerprint>``. It lives in MLflow only, never in a DVC output."""
    experiment = os.environ.get("DVC_EXP_NAME")
    if experiment:
        return f"{model}@{experiment}"
    sha = tags.get("reprolab.git_sha") or git_sha()
    if sha == "unknown":
        return f"{model}@{study.rsplit('.', 1)[-1][:12]}"
    return f"{model}@{sha[:7]}" + ("-dirty" if code_diff() else "")
