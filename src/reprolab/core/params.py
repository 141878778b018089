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
from reprolab.core.errors import ParamsError, cut, first_lines, shown
from reprolab.core.schema import Params

# A params file is a few kB; past these it is a mistake or a bomb, refused before parsing
# (a 50 MB file of unknown keys took 150 s and 3.8 GB to report) or before building it (a
# YAML alias bomb expands exponentially: 8 levels took 1 GB, 9 never finished).
MAX_BYTES = 1 << 20
MAX_NODES = 100_000


def _format_error(err: ValidationError, source: str) -> str:
    """One line per bad value; a single one on the source's line (``params.yaml: key: ...``)."""
    lines = []
    for e in err.errors():
        key = cut(".".join(str(p) for p in e["loc"]) or "<root>", 80)
        msg = cut(e["msg"].removeprefix("Value error, "), 400)
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (got {shown(e['input'])}); check its spelling")
        elif e["type"] == "missing":
            lines.append(f"  {key}: required but missing")
        else:
            lines.append(f"  {key}: {msg} (got {shown(e['input'])})")
    if len(lines) == 1:
        return f"{source}: {lines[0].strip()}"
    return "\n".join([f"{source}: {err.error_count()} invalid value(s)", *first_lines(lines)])


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
    return validate_params(
        read_params_file(path),
        str(path),
        options_of=options_of,
        kinds_of=kinds_of,
        before_modules=before_modules,
    )


def read_params_file(path: Path) -> Any:
    """A params (or preset) file parsed, refused first when it is too large, when a key
    repeats, or when its aliases expand it past MAX_NODES values."""
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the repo root)")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ParamsError(
            f"{path}: {size} bytes; a params file is at most {MAX_BYTES} (is it the right file?)"
        )
    try:
        loader = type("Loader", (_UniqueKeyLoader,), {"source": str(path)})
        return yaml.load(path.read_text(), Loader=loader) or {}  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {cut(str(err), 400)}") from None


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
                    f"{self.source}: key {shown(key)} appears twice in one mapping (line "
                    f"{key_node.start_mark.line + 1}); keep one"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node, self.source)
        return super().construct_document(node)


def _check_expansion(root: yaml.Node, source: str) -> None:
    """Refuse a document whose aliases expand it past MAX_NODES nodes, or that contains
    itself, before any of it is built: each node is counted once, with what it expands to."""
    sizes: dict[int, int] = {}
    expanding: set[int] = set()  # pushed with its children still to count: an ancestor
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if not children_done and id(node) in expanding:
            raise ParamsError(
                f"{source}: an alias (*name) on line {node.start_mark.line + 1} contains "
                "itself; a params value cannot be recursive"
            )
        children = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if children_done:
            expanding.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > MAX_NODES:
                raise ParamsError(
                    f"{source}: its aliases (*name) expand it past {MAX_NODES} values (line "
                    f"{node.start_mark.line + 1}); write the values out or share fewer"
                )
            continue
        expanding.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
