"""Loading params.yaml: parse, validate against the schema, check each model's arch.

Every error names the dotted key and the value it was given, e.g.
``tune.lr: low (0.1) must be below high (0.001)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from reprolab.core import registry
from reprolab.core.errors import ParamsError
from reprolab.core.schema import Params


def _shown(value: Any) -> str:
    """The bad value as given, cut short when it is a whole section (a cross-key check)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _format_error(err: ValidationError, source: str) -> str:
    """One line per bad value; a single one on the source's line (``params.yaml: key: ...``)."""
    lines = [f"{source}: {err.error_count()} invalid value(s)"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (got {e['input']!r}); check its spelling")
        elif e["type"] == "missing":
            lines.append(f"  {key}: required but missing")
        else:
            lines.append(f"  {key}: {msg} (got {_shown(e['input'])})")
    if len(lines) == 2:
        return f"{source}: {lines[1].strip()}"
    return "\n".join(lines)


def validate_params(
    raw: dict[str, Any],
    source: str = "params.yaml",
    options_of: Iterable[str] | None = None,
    kinds_of: Iterable[str] | None = None,
    before_modules: Callable[[Params], None] | None = None,
) -> Params:
    """Validate a parsed params mapping; raise ParamsError naming each bad key and value.

    ``options_of`` names the models whose arch ``options`` are checked too (default: all);
    ``kinds_of`` the dataset kinds whose dataset is checked to be of that kind (default:
    all). Both import modules (an arch imports torch), so a stage checks only its own;
    ``before_modules(params)`` runs first (a stage sets its numerics before torch loads).
    """
    if not isinstance(raw, dict):
        raise ParamsError(
            f"{source}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_error(err, source)) from None
    if before_modules is not None:
        before_modules(params)
    for kind in ("image", "tabular") if kinds_of is None else kinds_of:
        params.datasets.check_kind(kind)
    for name in params.all_models() if options_of is None else options_of:
        spec = params.model(name)
        group = params.group_of(name)
        kind = params.kind_of(name)
        if kind not in registry.arch_inputs(spec.arch):
            raise ParamsError(
                f"{source}: {group}.{name}.arch: {spec.arch!r} takes "
                f"{' or '.join(registry.arch_inputs(spec.arch))} input, but {group} read the "
                f"{kind} dataset (datasets.{kind}: {getattr(params.datasets, kind)!r})"
            )
        task = params.task_of(name)
        if (registry.model_task(spec.arch) == "generative") != (task == "generative"):
            raise ParamsError(
                f"{source}: {group}.{name}.arch: {spec.arch!r} is a "
                f"{registry.model_task(spec.arch)} architecture, {group} need a "
                + ("generative one" if task == "generative" else "classifier or regressor")
            )
        registry.validate_model_options(
            spec.arch, spec.options, key=f"{group}.{name}.options", source=source
        )
    return params


def load_params(
    path: str | os.PathLike[str] = "params.yaml",
    options_of: Iterable[str] | None = None,
    kinds_of: Iterable[str] | None = None,
    before_modules: Callable[[Params], None] | None = None,
) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the repo root)")
    try:
        loader = type("Loader", (_UniqueKeyLoader,), {"source": str(path)})
        raw = yaml.load(path.read_text(), Loader=loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return validate_params(
        raw or {},
        str(path),
        options_of=options_of,
        kinds_of=kinds_of,
        before_modules=before_modules,
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (PyYAML keeps the last
    silently; DVC rejects the file), naming the key and its line."""

    source = "params.yaml"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ParamsError(
                    f"{self.source}: key {key!r} appears twice in one mapping (line "
                    f"{key_node.start_mark.line + 1}); keep one"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
