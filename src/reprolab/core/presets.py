"""Named params overlays in presets/<name>.yaml, merged into params.yaml.

Mappings merge key by key, except the model groups (``classifiers``, ``regressors``,
``generators``), which a preset replaces whole: it picks its models, ``{}`` for none. The
result is validated before params.yaml is rewritten, comments kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from reprolab.core.errors import ParamsError, shown
from reprolab.core.io import atomic_path
from reprolab.core.params import read_params_file, validate_params

PRESETS = Path("presets")
REPLACED_WHOLE = {"classifiers", "regressors", "generators"}


def preset_names(folder: Path = PRESETS) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _merge(base: Any, overlay: Any, top: bool = True) -> Any:
    if not (isinstance(base, dict) and isinstance(overlay, dict)):
        return overlay
    for key, value in overlay.items():
        if top and key in REPLACED_WHOLE or key not in base:
            base[key] = value
        else:
            base[key] = _merge(base[key], value, top=False)
    return base


def apply_preset(name: str, params_path: Path, folder: Path = PRESETS) -> dict:
    """Merge presets/<name>.yaml into ``params_path``; return the merged params as plain data."""
    if name not in preset_names(folder):  # a name, never a path (`../params`)
        known = ", ".join(preset_names(folder))
        raise ParamsError(f"preset {shown(name)} not found; known: {known}")
    preset = folder / f"{name}.yaml"
    for path in (params_path, preset):  # bounded (size, aliases) before ruamel builds them
        read_params_file(path)
    yaml = YAML()  # round-trip: params.yaml keeps its comments and order
    yaml.width = 4096  # no rewrapped flow mappings
    # null stays `null` (ruamel's round-trip writes an empty value)
    yaml.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    params = yaml.load(params_path.read_text())
    merged = _merge(params, yaml.load(preset.read_text()))
    plain = YAML(typ="safe")
    with atomic_path(params_path) as tmp:
        with open(tmp, "w") as f:
            yaml.dump(merged, f)
        validate_params(plain.load(tmp.read_text()), source=f"{params_path} + preset {name}")
    return plain.load(params_path.read_text())
