"""A study's identity: its name is the dataset, the model and a fingerprint of everything
that decides what its trials find (the params the objective reads, the split checksums, the
code it runs, the numerics mode, the installed packages and the task's own inputs), so a
killed run resumes its study and a change of any of these starts a fresh one. Every worker
of one checkout computes the same name, whatever its entry point. The inputs are also
recorded as the study's user attributes.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from reprolab.learn.context import ModelContext
from reprolab.learn.tasks import get_task

PACKAGE = Path(__file__).parents[1]  # src/reprolab
# The code a trial runs, beside the model's arch module: its layers (dvc.yaml's tune
# stages depend on the same folders). MLflow logging (tracking/) does not change results.
CODE_UNITS = ("core", "learn", "tuning", "models/_base.py")


def code_files(archs: tuple[str, ...]) -> list[Path]:
    files: list[Path] = []
    for unit in (*CODE_UNITS, *(f"models/{arch}.py" for arch in archs)):
        path = PACKAGE / unit
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


@functools.cache
def code_fingerprint(archs: tuple[str, ...]) -> str:
    """sha256 of the code units and the arch modules (paths and bytes); once per process."""
    digest = hashlib.sha256()
    for path in code_files(archs):
        digest.update(path.relative_to(PACKAGE).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def study_inputs(ctx: ModelContext) -> dict:
    """Everything the fingerprint covers, as JSON-ready values."""
    p = ctx.params
    archs = [ctx.spec.arch]
    scorer = getattr(ctx.spec, "scorer", None)
    if scorer is not None:
        archs.append(scorer.arch)
    return {
        "seed": p.seed,
        "dataset": ctx.dataset,
        "threads": p.threads,
        "device": ctx.device.type,
        # How many workers run it and where it is stored do not change what it finds.
        "tune": ctx.tune.model_dump(mode="json", exclude={"workers", "storage"}),
        "train": ctx.train.model_dump(
            mode="json", include=set(get_task(ctx.task).trial_train_keys)
        ),
        "model": ctx.spec.model_dump(mode="json"),
        "data": ctx.data_md5(("train", "val")),
        "code": code_fingerprint(tuple(archs)),
        # The kernels and packages the trials compute with (dvc.yaml: numerics and
        # requirements.lock): a new pin or mode reruns the stage, which must tune afresh.
        "numerics": p.numerics,
        "packages": installed_versions(),
        **get_task(ctx.task).identity(ctx),
    }


# The pinned packages a trial computes with (not pillow, matplotlib or skops: decoding,
# figures and the baselines' files are outside the objective).
TRIAL_PACKAGES = ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "optuna")


@functools.cache
def installed_versions() -> dict[str, str | None]:
    """The installed version of each package a trial computes with (None: absent)."""
    found: dict[str, str | None] = {}
    for name in TRIAL_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def study_name(ctx: ModelContext) -> str:
    digest = hashlib.sha256(json.dumps(study_inputs(ctx), sort_keys=True).encode()).hexdigest()
    return f"{ctx.dataset}.{ctx.name}.{digest[:12]}"
