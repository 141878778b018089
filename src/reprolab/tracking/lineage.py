"""Lineage of a run as MLflow shows it: the split files it read as dataset inputs (DVC's md5
as the digest, the path as the source, the context train / validation / test), and the code
diff it ran with when the checkout differs from its commit (as inside `dvc exp run`)."""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Mapping

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from reprolab.tracking.store import retrying_duplicates

CONTEXTS = {"train": "train", "val": "validation", "test": "test"}
MD5_TAG, PATH_TAG = "reprolab.data_md5.", "reprolab.data_path."
# What a run's result depends on besides the data: a diff here is logged with the run.
CODE = ["src", "stages", "params.yaml", "dvc.yaml", "requirements.lock"]


def dataset_inputs(dataset: str, tags: Mapping[str, str]) -> list[DatasetInput]:
    """One input per split named in the stage tags (``reprolab.data_md5.<split>``)."""
    inputs = []
    for key, md5 in sorted(tags.items()):
        if not key.startswith(MD5_TAG):
            continue
        split = key.removeprefix(MD5_TAG)
        path = tags.get(PATH_TAG + split, "")
        entity = Dataset(
            name=f"{dataset}-{split}",
            digest=md5,
            source_type="dvc",
            source=json.dumps({"path": path, "md5": md5}, sort_keys=True),
        )
        context = InputTag(MLFLOW_DATASET_CONTEXT, CONTEXTS.get(split, split))
        inputs.append(DatasetInput(entity, tags=[context]))
    return inputs


def log_inputs(client: MlflowClient, run_id: str, dataset: str, tags: Mapping[str, str]) -> None:
    """Log the split inputs the run does not hold yet (stages log into one parent run, which
    two workspaces on one server share: one that loses the race to insert finds them then)."""

    def log_missing() -> None:
        held = {
            (d.dataset.digest, d.dataset.name) for d in client.get_run(run_id).inputs.dataset_inputs
        }
        inputs = dataset_inputs(dataset, tags)
        new = [i for i in inputs if (i.dataset.digest, i.dataset.name) not in held]
        if new:
            client.log_inputs(run_id, datasets=new)

    retrying_duplicates(log_missing)


def _git(*args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def code_diff() -> str:
    """`git diff HEAD` of the code and config, plus each file there that git does not track
    yet (a new arch module is code the run used): empty when they are as committed. Once per
    process: the checkout does not change under a running stage."""
    tracked = _git("diff", "HEAD", "--", *CODE)
    if tracked is None or tracked.returncode != 0:
        return ""
    new = _git("ls-files", "--others", "--exclude-standard", "--", *CODE)
    diffs = [tracked.stdout]
    for name in new.stdout.splitlines() if new is not None and new.returncode == 0 else []:
        added = _git("diff", "--no-index", "--", "/dev/null", name)  # exits 1: they differ
        diffs.append(added.stdout if added is not None else f"new file {name}\n")
    return "".join(diffs)


_DIFF_LOGGED: set[str] = set()


def log_code_diff(client: MlflowClient, run_id: str) -> None:
    """Tag the run dirty or not and, if dirty, attach the diff: once per run and process."""
    if run_id in _DIFF_LOGGED:
        return
    diff = code_diff()
    dirty = "true" if diff else "false"
    retrying_duplicates(lambda: client.set_tag(run_id, "reprolab.git_dirty", dirty))
    if diff:
        client.log_text(run_id, diff, "lineage/git.diff")
    _DIFF_LOGGED.add(run_id)
