"""What a stage's interpreter spends on starting and exiting.

``bench/startup.py [ROUNDS]``: a process that imports what a stage imports (torch, MLflow,
Optuna, scikit-learn), then exits normally, with gc.freeze() first (what
core.stage.run_stage does), or with os._exit (no teardown at all, the floor). Alternating
fresh processes; prints medians and the ratio to the normal exit.

``bench/startup.py --stages [ROUNDS] [--code DIR ...]``: per stage script, run for real
(``python -X importtime stages/<s>.py <arg>``) in the workspace of the current folder (a
clone after `dvc repro`: it rewrites the same outputs and logs MLflow runs), the seconds
spent importing, in all and per heavy package, and the whole run's wall and CPU time (user
+ system: on a shared machine the steadier figure); medians. Each ``--code DIR`` (default:
this checkout) runs DIR/stages with DIR/src, rounds alternating between them, to compare
two commits on one machine at one time.

    .venv/bin/python bench/startup.py [ROUNDS]
    cd CLONE && /path/to/.venv/bin/python /path/to/bench/startup.py --stages 3 --code A --code B
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

IMPORTS = "import torch, mlflow, optuna, sklearn"
VARIANTS = {
    "normal exit": IMPORTS,
    "gc.freeze() then exit": IMPORTS + "; import gc; gc.freeze()",
    "os._exit(0)": IMPORTS + "; import os; os._exit(0)",
}

# The short stages of the default pipeline, where startup is most of the run. baselines
# starts as evaluate_baselines does, train and tune as evaluate (tune adds Optuna); their
# fits take tens of seconds, so they are left out.
STAGES = [
    ("download", "image"),
    ("split", "image"),
    ("evaluate_baselines", "image"),
    ("evaluate", "mlp"),
    ("report",),
]
PACKAGES = ("torch", "mlflow", "optuna", "sklearn", "matplotlib")
LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")


def wall(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


def exits(rounds: int) -> None:
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for r in range(rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            times[name].append(wall(VARIANTS[name]))
    base = statistics.median(times["normal exit"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:24s} {median:.2f} s  ({median / base:.2f} of the normal exit)")


def import_seconds(stderr: str) -> dict[str, float]:
    """-X importtime's report summed: ``total`` (every import), and per package of PACKAGES
    what importing it cost, the modules it imported first included (an import of it from
    inside another package counts too, so the packages' columns may overlap)."""
    lines = [m for m in map(LINE.match, stderr.splitlines()) if m is not None]
    spent = dict.fromkeys(("total", *PACKAGES), 0.0)
    # A module's line comes after those of the modules it imports, one level deeper.
    importer: dict[int, str] = {}
    for match in reversed(lines):
        depth, name, cumulative = len(match[3]) // 2, match[4], int(match[2]) / 1e6
        top = name.split(".")[0]
        if depth == 0:
            spent["total"] += cumulative
        if top in spent and (depth == 0 or importer[depth - 1].split(".")[0] != top):
            spent[top] += cumulative
        importer[depth] = name
    return spent


def run_stage(code: Path, stage: tuple[str, ...]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(code / "src")}
    script = code / "stages" / f"{stage[0]}.py"
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(script), *stage[1:]],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{' '.join(stage)} with {code} failed:\n{done.stderr[-2000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"wall": seconds, "cpu": cpu, **import_seconds(done.stderr)}


def stages(rounds: int, codes: list[Path]) -> None:
    runs: dict[tuple, list[dict[str, float]]] = {}
    for r in range(rounds):
        for code in codes if r % 2 == 0 else list(reversed(codes)):
            for stage in STAGES:
                runs.setdefault((code, stage), []).append(run_stage(code, stage))
    columns = ("wall", "cpu", "total", *PACKAGES)
    print(f"{'stage':26s} {'code':28s} " + " ".join(f"{c:>10s}" for c in columns))
    for stage in STAGES:
        for code in codes:
            rows = runs[(code, stage)]
            medians = [statistics.median(row[c] for row in rows) for c in columns]
            name = "@".join(stage[:1] + stage[1:])
            print(f"{name:26s} {str(code)[-28:]:28s} " + " ".join(f"{m:10.2f}" for m in medians))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rounds", nargs="?", type=int, default=5)
    parser.add_argument("--stages", action="store_true", help="time each stage's imports")
    parser.add_argument("--code", action="append", type=Path, help="a checkout to run")
    args = parser.parse_args()
    if args.stages:
        default = Path(__file__).resolve().parents[1]
        stages(args.rounds, [c.resolve() for c in args.code or [default]])
    else:
        exits(args.rounds)


if __name__ == "__main__":
    main()
