"""Fresh copies of a checkout's sources, for benches and end-to-end tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from reprolab.core import paths

# What a run writes (DVC outputs and the lock): never part of a fresh copy of the sources.
OUTPUTS = (
    "dvc.lock",
    f"{paths.SPLITS}/",
    f"{paths.MODELS}/",
    f"{paths.METRICS}/",
    f"{paths.PLOTS}/",
    f"{paths.REPORTS}/",
)


def copy_sources(repo: Path, dest: Path, exclude: tuple[str, ...] = ()) -> list[str]:
    """Copy the files git lists in ``repo`` (tracked, and untracked but not ignored, as they
    are in the working tree) to ``dest``, leaving out run outputs and ``exclude`` prefixes."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    copied = []
    for rel in listed:
        if not (repo / rel).is_file() or rel.startswith(OUTPUTS + exclude):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, dest / rel)
        copied.append(rel)
    return copied
