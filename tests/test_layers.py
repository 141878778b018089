"""The library's layers, read statically from the source (no run needed): imports go
downward only, there is no import cycle, and every stage's dvc.yaml deps cover the code it
can import, so DVC reruns a stage whenever code it runs changes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = SRC / "reprolab"
# Lowest first. A module may import its own layer and the layers below, never one above.
LAYERS = ["core", "data", "models", "tracking", "learn", "tuning", "report", "cli"]
TOP = {
    "cli.py": "cli",
    "predict.py": "cli",
    "verify.py": "cli",
    "dvc_artifacts.py": "cli",
    "teamstack.py": "cli",
    "__init__.py": "core",
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "core"
    if len(parts) == 2 and f"{parts[1]}.py" in TOP:
        return TOP[f"{parts[1]}.py"]
    return parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def project_imports(path: Path) -> set[str]:
    """Every reprolab module ``path`` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("reprolab"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if module_path(sub) else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("reprolab")}
    return found


def module_path(module: str) -> Path | None:
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


GRAPH = {module_name(p): project_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_imports_only_its_own_layer_or_below() -> None:
    wrong = []
    for module, imports in GRAPH.items():
        rank = LAYERS.index(layer_of(module))
        for imported in imports:
            if LAYERS.index(layer_of(imported)) > rank:
                wrong.append(f"{module} ({layer_of(module)}) imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    """Depth-first search over the module graph (a package's __init__ counts as a module)."""
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for imported in sorted(GRAPH.get(module, ())):
            if imported not in GRAPH:
                continue
            if state.get(imported) == 1:
                cycles.append(" -> ".join([*stack[stack.index(imported) :], imported]))
            elif imported not in state:
                visit(imported, [*stack, imported])
        state[module] = 2

    for module in GRAPH:
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_no_module_over_300_lines() -> None:
    long = {
        p.relative_to(REPO).as_posix(): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 300
    }
    assert not long, long


def closure(start: set[str]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        module = todo.pop()
        if module in seen or module not in GRAPH:
            continue
        seen.add(module)
        todo += GRAPH[module]
    return seen


def _stages() -> dict[str, dict]:
    """dvc.yaml's stages with ``${lib}`` resolved (foreach items stay templated)."""
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    lib = doc["vars"][0]["lib"]
    stages = {}
    for name, stage in doc["stages"].items():
        body = stage.get("do", stage)
        deps = [d.replace("${lib}", lib) for d in body["deps"]]
        stages[name] = {"cmd": body["cmd"], "deps": deps}
    return stages


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_stage_deps_cover_the_code_it_imports(stage: str) -> None:
    """The script's import closure (registry modules, loaded by name, are the arch module
    the stage lists itself and the dataset sources of data/) lies within its code deps."""
    info = _stages()[stage]
    script = REPO / info["cmd"].split()[-2 if "${key}" in info["cmd"] else -1]
    reached = closure(project_imports(script))
    # Modules imported by name at run time: a task module, through learn.tasks.get_task.
    if "reprolab.learn.tasks" in reached:
        reached = closure(reached | {m for m in GRAPH if m.startswith("reprolab.learn.tasks.")})
    deps = [d for d in info["deps"] if d.startswith("src/")]
    uncovered = []
    for module in sorted(reached):
        rel = module_path(module).relative_to(REPO).as_posix()
        if rel.startswith("src/reprolab/models/") and not rel.endswith("__init__.py"):
            continue  # arch modules: the stage lists ${item.arch} (test_dag checks it)
        if rel == "src/reprolab/__init__.py":
            continue
        if not any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps):
            uncovered.append(rel)
    assert not uncovered, f"{stage} can import {uncovered}, not in its dvc.yaml deps"


def test_report_stage_reruns_for_report_code_only() -> None:
    """Training never depends on the report's code: editing it reruns only the report."""
    for name, info in _stages().items():
        if name != "report":
            assert not any("/report" in d for d in info["deps"]), name
