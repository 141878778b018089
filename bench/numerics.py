"""Cost of portable numerics: training throughput of a small CNN and an MLP (2 threads)
with the portable caps (core.numerics.PORTABLE_ENV) against native kernels, in alternating
fresh processes (the caps must be set before torch loads), printed as portable/native.

    .venv/bin/python bench/numerics.py [ROUNDS] [STEPS] [MODELS]

BENCH_CLOCK=cpu (environment) measures samples per CPU second of the process instead of per
wall second, with OpenMP threads passive: on a loaded shared machine wall time mostly
measures the other jobs.

MODELS: the probe's names (default ``cnn,mlp``) or ``pipeline``: every model family of the
default pipeline as params.yaml builds it (numerics_probe.PIPELINE, digits/diabetes shapes).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

PROBE = Path(__file__).with_name("numerics_probe.py")
KNOBS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "OPENBLAS_CORETYPE")
CLOCK = os.environ.get("BENCH_CLOCK", "wall")
PIPELINE = ("mlp", "lenet", "cnn", "alexnet", "resnet18", "tabular_mlp", "dcgan")


def samples_per_s(mode: str, steps: int, models: list[str]) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in KNOBS}
    if CLOCK == "cpu":  # per CPU second of the process, OpenMP not spinning
        env |= {"PROBE_CLOCK": "cpu", "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, str(PROBE), "--mode", mode, "--bench", str(steps), "--threads", "2"]
    cmd += ["--models", ",".join(models)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("PROBE "))
    return json.loads(line[len("PROBE ") :])["samples_per_s"]


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 600
    names = sys.argv[3] if len(sys.argv) > 3 else "cnn,mlp"
    models = [f"pipeline:{m}" for m in PIPELINE] if names == "pipeline" else names.split(",")
    runs: dict[str, list[dict[str, float]]] = {"native": [], "portable": []}
    for r in range(rounds):
        for mode in ("native", "portable") if r % 2 == 0 else ("portable", "native"):
            runs[mode].append(samples_per_s(mode, steps, models))
            print(r, mode, runs[mode][-1], flush=True)
    for model in models:
        ratios = [
            p[model] / n[model] for p, n in zip(runs["portable"], runs["native"], strict=True)
        ]
        native = statistics.median(n[model] for n in runs["native"])
        portable = statistics.median(p[model] for p in runs["portable"])
        print(
            f"{model}: native {native:,.0f}/s, portable {portable:,.0f}/s, portable/native "
            f"{statistics.median(ratios):.3f} (per round {min(ratios):.3f}-{max(ratios):.3f})"
        )


if __name__ == "__main__":
    main()
