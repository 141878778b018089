"""Registries of datasets and model architectures: one module per entry.

An entry is found by its file name (``reprolab/models/lenet.py`` is the arch ``lenet``)
and imported only when used, so a stage imports exactly the code it runs and dvc.yaml
can list exactly those files as its deps.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from reprolab.core.errors import ParamsError, cut, first_lines, shown

_HERE = Path(__file__).parents[1]  # src/reprolab
MODELS_PACKAGE = "reprolab.models"
DATASETS_PACKAGE = "reprolab.data.sources"


def _names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


def model_names() -> list[str]:
    return _names(_HERE / "models")


def dataset_names() -> list[str]:
    return _names(_HERE / "data" / "sources")


def model_module(arch: str) -> ModuleType:
    if arch not in model_names():
        known = ", ".join(model_names())
        raise KeyError(f"unknown model architecture {shown(arch)}; known: {known}")
    return importlib.import_module(f"{MODELS_PACKAGE}.{arch}")


def dataset_module(name: str) -> ModuleType:
    if name not in dataset_names():
        raise KeyError(f"unknown dataset {shown(name)}; known: {', '.join(dataset_names())}")
    return importlib.import_module(f"{DATASETS_PACKAGE}.{name}")


def dataset_kind(name: str) -> str:
    """``image`` or ``tabular``: the ``KIND`` a dataset module declares (default image)."""
    return getattr(dataset_module(name), "KIND", "image")


def arch_inputs(arch: str) -> tuple[str, ...]:
    """The kinds of input an architecture takes (its ``INPUTS``; default: both)."""
    return tuple(getattr(model_module(arch), "INPUTS", ("image", "tabular")))


def model_task(arch: str) -> str:
    """``generative`` for a GAN module (``TASK = "generative"``), else ``supervised``."""
    return getattr(model_module(arch), "TASK", "supervised")


def validate_model_options(
    arch: str, options: dict[str, Any], key: str, source: str = "params.yaml"
) -> Any:
    """Validate ``options`` against the arch module's ``Options`` schema."""
    from pydantic import ValidationError

    module = model_module(arch)
    try:
        return module.Options.model_validate(options)
    except ValidationError as err:
        details = []
        for e in err.errors():
            sub = cut(".".join(str(p) for p in e["loc"]), 80)
            msg = cut(e["msg"].removeprefix("Value error, "), 400)
            details.append(f"  {key}.{sub}: {msg} (got {shown(e['input'])})")
        raise ParamsError(
            f"{source}: invalid model options\n" + "\n".join(first_lines(details))
        ) from None
