"""A stage's fixed cost: a short stage imports only the heavy packages it uses (torch,
MLflow, Optuna, scikit-learn, matplotlib each take a second or more to import on 2 cores),
and every stage turns garbage collection back on once its imports are done."""

from __future__ import annotations

import ast
import gc
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, clean_env

from reprolab.core import stage as stage_module

HEAVY = ("torch", "torchvision", "mlflow", "optuna", "sklearn", "matplotlib")

# Run in a fresh interpreter: the stage script as DVC runs it (run_stage parses its
# arguments and validates params.yaml with the script's own flags, setting the numerics),
# with a body that runs only the imports of the script's main(); then the heavy packages
# loaded are printed. Nothing is computed or written.
PROBE = """
import ast, json, runpy, sys
from reprolab.core import stage

sys.argv = sys.argv[1:]  # as `python stages/<s>.py ARG` sees them
script = sys.argv[0]
tree = ast.parse(open(script).read())
main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
imports = [n for n in ast.walk(main) if isinstance(n, (ast.Import, ast.ImportFrom))]
code = compile(ast.Module(body=imports, type_ignores=[]), script, "exec")
real = stage.run_stage

def imports_only(description, body, **flags):
    real(description, lambda params, args: exec(code, {}), **flags)

stage.run_stage = imports_only
runpy.run_path(script, run_name="__main__")
print(json.dumps(sorted(m for m in HEAVY if m in sys.modules)))
"""

# What each light stage does not use: download copies and checksums files; split is numpy
# and scikit-learn's splitter; the report reads metrics and tables, draws with matplotlib and
# moves an MLflow alias (Optuna and scikit-learn load only where it draws importances).
LIGHT = {
    ("download", "image"): set(HEAVY),
    ("split", "image"): set(HEAVY) - {"sklearn"},
    ("report",): {"torch", "torchvision", "optuna", "sklearn"},
}


def heavy_imports(stage: str, *args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{PROBE}", *args],
        cwd=REPO,
        env={**clean_env(), "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("stage", LIGHT, ids="@".join)
def test_a_light_stage_imports_no_heavy_package_it_does_not_use(stage: tuple[str, ...]) -> None:
    script = f"stages/{stage[0]}.py"
    needless = heavy_imports(stage[0], script, *stage[1:]) & LIGHT[stage]
    assert not needless, f"{'@'.join(stage)} imports {sorted(needless)} and never uses them"


@pytest.mark.parametrize("script", sorted((REPO / "stages").glob("*.py")), ids=lambda p: p.stem)
def test_every_stage_turns_collection_back_on_after_its_imports(script: Path) -> None:
    """run_stage collects no garbage while a stage imports; main() calls imports_done()
    after its last import, or the whole computation would run without collection."""
    tree = ast.parse(script.read_text())
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    calls = [
        n.lineno
        for n in ast.walk(main)
        if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "imports_done"
    ]
    imports = [n.lineno for n in ast.walk(main) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert len(calls) == 1, f"{script.name}: main() calls imports_done() {len(calls)} times"
    assert not imports or calls[0] > max(imports), (
        f"{script.name}: imports_done() on line {calls[0]}, an import after it on line "
        f"{max(imports)}"
    )


def test_run_stage_collects_no_garbage_until_the_stage_has_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.setattr(sys, "argv", ["report.py"])
    seen = []

    def body(params, args) -> None:
        seen.append(gc.isenabled())
        stage_module.imports_done()
        seen.append(gc.isenabled())
        gc.disable()  # a body that fails to turn it back on: leaving run_stage does

    assert gc.isenabled()
    stage_module.run_stage("a stage", body)
    assert seen == [False, True]
    assert gc.isenabled()
