"""`reprolab verify [STAGE...]`: rerun stages in a scratch copy from the inputs dvc.lock
records, and compare every output's md5 with the one dvc.lock records.

The workspace is never written: each stage's deps (which `dvc status` must find unchanged)
are copied from the workspace into a scratch folder, the stage's locked command runs there,
and its outputs are hashed the way DVC hashes them (a folder: md5 of its sorted file list).
Optuna studies go to a scratch storage (so trials really rerun), MLflow runs to the
experiment ``reprolab-<dataset>-verify``, and no model version or alias is registered.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from reprolab.core.checkout import copy_sources
from reprolab.core.errors import ReprolabError, shown
from reprolab.core.io import md5_file
from reprolab.tracking.runs import VERIFY_ENV
from reprolab.tracking.store import tracking_uri

IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


@dataclass
class Outcome:
    stage: str
    output: str
    status: str  # identical | differs | missing | stale
    detail: str = ""


def dir_md5(folder: Path) -> str:
    """DVC's hash of a folder output: md5 of the JSON list of its files' md5s and paths."""
    entries = [
        {"md5": md5_file(p), "relpath": p.relative_to(folder).as_posix()}
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def output_md5(path: Path) -> str | None:
    if path.is_dir():
        return dir_md5(path)
    return md5_file(path) if path.is_file() else None


def largest_difference(old: object, new: object) -> float | None:
    """The largest absolute difference between the numbers of two JSON values of the same
    shape (None when their shapes differ)."""
    if isinstance(old, bool) or isinstance(new, bool):
        return 0.0 if old == new else None
    if isinstance(old, int | float) and isinstance(new, int | float):
        if math.isnan(old) and math.isnan(new):
            return 0.0
        return abs(float(old) - float(new))
    if isinstance(old, dict) and isinstance(new, dict) and old.keys() == new.keys():
        parts = [largest_difference(old[k], new[k]) for k in old]
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        parts = [largest_difference(a, b) for a, b in zip(old, new, strict=True)]
    else:
        return 0.0 if old == new else None
    return None if None in parts else max(parts, default=0.0)


def _dvc(root: Path, *args: str) -> str:
    """``dvc <args>`` in ``root``; its stdout, or one line saying why it failed (DVC's own
    message wraps over several lines: another process holding its lock, for one)."""
    out = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True)
    if out.returncode == 0:
        return out.stdout
    said = " ".join(out.stderr.split()).removeprefix("ERROR: ")
    if "Unable to acquire lock" in said:
        raise ReprolabError(
            f"`dvc {args[0]}` in {root}: another DVC process holds the repo's lock (a `dvc "
            "repro` running?); rerun verify when it has finished"
        )
    raise ReprolabError(f"`dvc {' '.join(args[:2])}` failed in {root}: {said[-300:]}")


def stale_stages(root: Path, stages: list[str]) -> dict[str, str]:
    """Stages whose deps or params in the workspace differ from dvc.lock (`dvc status`):
    their recorded inputs are not here to rerun from. A stage dvc.lock still records but
    dvc.yaml no longer has (its model removed from params.yaml) is stale too."""
    defined = set(_dvc(root, "stage", "list", "--name-only").split())
    stale = {
        stage: "not in dvc.yaml any more (its model removed from params.yaml?); nothing to rerun"
        for stage in stages
        if stage not in defined
    }
    if len(stale) == len(stages):
        return stale
    status = _dvc(root, "status", "--json", *(s for s in stages if s not in stale))
    for stage, changes in json.loads(status or "{}").items():
        for change in changes:
            if isinstance(change, dict) and ({"changed deps", "changed params"} & change.keys()):
                stale[stage] = "its inputs changed since dvc.lock; run `dvc repro` first"
            elif change in ("changed command", "always changed"):
                stale[stage] = f"{change}; run `dvc repro` first"
    return stale


def _inside(stage: str, kind: str, value: object, root: Path) -> None:
    """Refuse a path of dvc.lock that is not a relative path inside the workspace: verify
    reads, copies and removes what dvc.lock names, so an absolute or ``..`` path must never
    reach the file system."""
    norm = os.path.normpath(value) if isinstance(value, str) and value else ""
    relative = norm and not os.path.isabs(norm) and norm != "." and norm.split(os.sep)[0] != ".."
    # Its folder resolved too (a symlinked folder leading out); the file itself may be a link
    # into DVC's cache.
    if relative and (root / norm).parent.resolve().is_relative_to(root.resolve()):
        return
    raise ReprolabError(
        f"dvc.lock: {stage}: {kind} {shown(value, 60)} is not a path inside the workspace {root}; "
        "restore dvc.lock (`git checkout dvc.lock`) or rerun `dvc repro`"
    )


def check_paths(root: Path, locked: dict, names: list[str]) -> None:
    """Every dep, output and params file of the stages ``names`` is inside ``root``."""
    for name in names:
        stage = locked[name] if isinstance(locked[name], dict) else {}
        for kind in ("deps", "outs"):
            for entry in stage.get(kind) or []:
                path = entry.get("path") if isinstance(entry, dict) else entry
                _inside(name, kind[:-1], path, root)
        for params_file in stage.get("params") or {}:
            _inside(name, "params file", params_file, root)


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_dir():
        shutil.rmtree(dest)
    if src.is_dir():
        shutil.copytree(src, dest, ignore=IGNORED)
    else:
        shutil.copy2(src, dest)


def verify(root: Path, names: list[str] | None = None) -> list[Outcome]:
    lock_path = root / "dvc.lock"
    if not lock_path.is_file():
        raise ReprolabError(f"{lock_path}: not found; run `dvc repro` to record the results")
    locked = yaml.safe_load(lock_path.read_text())["stages"]
    unknown = [n for n in names or [] if n not in locked]
    if unknown:
        raise ReprolabError(
            f"not in dvc.lock: {', '.join(unknown)}; stages there: {', '.join(locked)}"
        )
    chosen = names or list(locked)
    check_paths(root, locked, chosen)  # before anything is read, copied or removed
    stale = stale_stages(root, chosen)
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="reprolab-verify-") as tmp:
        scratch = Path(tmp) / "repo"
        scratch.mkdir()
        copy_sources(root, scratch)
        env = {
            **os.environ,
            "DVC_ROOT": str(scratch),
            VERIFY_ENV: "1",
            "MLFLOW_TRACKING_URI": tracking_uri(),
            "REPROLAB_OPTUNA_STORAGE": f"sqlite:///{Path(tmp) / 'studies.db'}",
        }
        for name in chosen:
            stage = locked[name]
            if name in stale:
                outcomes += [Outcome(name, o["path"], "stale", stale[name]) for o in stage["outs"]]
                continue
            for dep in stage.get("deps", []):
                _copy(root / dep["path"], scratch / dep["path"])
            for out in stage["outs"]:  # a stage starts without its outputs, as under DVC
                target = scratch / out["path"]
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            run = subprocess.run(
                stage["cmd"], shell=True, cwd=scratch, env=env, capture_output=True, text=True
            )
            if run.returncode != 0:
                tail = (run.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise ReprolabError(f"{name}: `{stage['cmd']}` failed in the scratch copy: {tail}")
            outcomes += [_compare(name, out, root, scratch) for out in stage["outs"]]
    return outcomes


def _compare(stage: str, out: dict, root: Path, scratch: Path) -> Outcome:
    path = out["path"]
    fresh = output_md5(scratch / path)
    if fresh is None:
        return Outcome(stage, path, "missing", "the rerun did not write it")
    here = output_md5(root / path)
    if fresh == out["md5"] and here != out["md5"]:  # a hand edit `dvc status` calls modified
        where = "missing from the workspace" if here is None else f"the workspace's md5 {here}"
        return Outcome(
            stage,
            path,
            "differs",
            f"{where}, dvc.lock {out['md5']}; the rerun matches dvc.lock: "
            f"`dvc checkout {path}` restores it",
        )
    if fresh == out["md5"]:
        return Outcome(stage, path, "identical")
    detail = f"md5 {fresh}, dvc.lock {out['md5']}"
    recorded = root / path
    # The recorded JSON is the workspace's file when its md5 is dvc.lock's.
    if path.endswith(".json") and recorded.is_file() and md5_file(recorded) == out["md5"]:
        diff = largest_difference(
            json.loads(recorded.read_text()), json.loads((scratch / path).read_text())
        )
        detail += "; other keys or shape" if diff is None else f"; largest difference {diff:.3g}"
    return Outcome(stage, path, "differs", detail)
