"""What a stage's interpreter spends on exit: a process that imports what a stage imports
(torch, MLflow, Optuna, scikit-learn), then exits normally, with gc.freeze() first (what
core.stage.run_stage does), or with os._exit (no teardown at all, the floor). Alternating
fresh processes; prints medians and the ratio to the normal exit.

    .venv/bin/python bench/startup.py [ROUNDS]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

IMPORTS = "import torch, mlflow, optuna, sklearn"
VARIANTS = {
    "normal exit": IMPORTS,
    "gc.freeze() then exit": IMPORTS + "; import gc; gc.freeze()",
    "os._exit(0)": IMPORTS + "; import os; os._exit(0)",
}


def wall(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for r in range(rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            times[name].append(wall(VARIANTS[name]))
    base = statistics.median(times["normal exit"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:24s} {median:.2f} s  ({median / base:.2f} of the normal exit)")


if __name__ == "__main__":
    main()
