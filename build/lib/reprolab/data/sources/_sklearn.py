"""Shared code of the sources whose original files ship inside scikit-learn."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path


def bundled_file(file_name: str) -> Path | None:
    """A file of ``sklearn/datasets/data/``, found without importing scikit-learn
    (an import costs ~1.5 s per stage)."""
    spec = find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / file_name
    return path if path.is_file() else None
