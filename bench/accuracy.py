"""Test accuracy per model against published figures, with the wall time of every stage.

Runs the real pipeline (`dvc repro`, stage by stage) in a fresh copy of this checkout per
dataset, with the dataset's preset (presets/<dataset>.yaml) and the mirror pointed at a folder
of original files. Not a test: it takes minutes per dataset on 2 cores.

    python bench/accuracy.py --dataset digits mnist fashion_mnist --mirror ../shared/datasets

Published figures: a small CNN with BatchNorm >= 99.2% on MNIST and >= 91.5% on
Fashion-MNIST, an MLP >= 98% on MNIST; on digits the best model should beat an RBF SVM on
the same split (98.9% for a stratified 80/20 split).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from reprolab.checkout import copy_sources  # noqa: E402
from reprolab.presets import apply_preset  # noqa: E402

TARGETS = {("mnist", "cnn"): 0.992, ("fashion_mnist", "cnn"): 0.915, ("mnist", "mlp"): 0.98}


def fresh_copy(dest: Path) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    copy_sources(REPO, dest, exclude=("bench/",))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@reprolab.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "bench"], cwd=dest, check=True)
    return dest


def stage_order(params: dict) -> list[str]:
    models = list(params["models"])
    per_model = [f"{s}@{m}" for s in ("tune", "train", "evaluate") for m in models]
    return ["download", "split", *per_model, "report"]


def svm_baseline(workspace: Path) -> float:
    """RBF SVM (scikit-learn's digits example: gamma=0.001) fit on train+val, scored on test."""
    from sklearn.svm import SVC

    parts = {s: np.load(workspace / f"data/splits/{s}.npz") for s in ("train", "val", "test")}
    x = np.concatenate([parts[s]["x"] for s in ("train", "val")]).reshape(-1, 64)
    y = np.concatenate([parts[s]["y"] for s in ("train", "val")])
    model = SVC(gamma=0.001).fit(x, y)
    return float(model.score(parts["test"]["x"].reshape(-1, 64), parts["test"]["y"]))


def run_dataset(dataset: str, mirror: str | None, root: Path) -> dict:
    workspace = fresh_copy(root / dataset)
    params = apply_preset(dataset, workspace / "params.yaml", workspace / "presets")
    if mirror and params.get("mirror"):  # the copy lives elsewhere: make the mirror absolute
        params["mirror"] = str(Path(mirror).resolve())
        (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    times = {}
    log = (root / f"{dataset}.log").open("w")
    for stage in stage_order(params):
        start = time.perf_counter()
        subprocess.run(
            ["dvc", "repro", "--single-item", stage],
            cwd=workspace,
            check=True,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        times[stage] = time.perf_counter() - start
        print(f"  {dataset}: {stage:<16} {times[stage]:7.1f} s", flush=True)
    result = {"dataset": dataset, "stage_seconds": times, "total_seconds": sum(times.values())}
    result["models"] = {
        m: json.loads((workspace / f"metrics/{m}/test.json").read_text())["accuracy"]
        for m in params["models"]
    }
    if dataset == "digits":
        result["svm_rbf"] = svm_baseline(workspace)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", nargs="+", default=["digits", "mnist", "fashion_mnist"])
    parser.add_argument("--mirror", default=str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "accuracy"))
    args = parser.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for dataset in args.dataset:
        print(f"{dataset}: running the pipeline with presets/{dataset}.yaml", flush=True)
        results.append(run_dataset(dataset, args.mirror, root))
    print(f"\n{'dataset':<14} {'model':<8} {'test acc':>9} {'target':>8}  {'wall (s)':>9}")
    for r in results:
        for model, accuracy in r["models"].items():
            target = TARGETS.get((r["dataset"], model))
            if r["dataset"] == "digits":
                target = r["svm_rbf"]
            mark = "" if target is None else ("  ok" if accuracy >= target else "  BELOW")
            tgt = "" if target is None else f"{target:.4f}"
            stages = sum(s for k, s in r["stage_seconds"].items() if k.endswith(f"@{model}"))
            print(f"{r['dataset']:<14} {model:<8} {accuracy:>9.4f} {tgt:>8}  {stages:>9.1f}{mark}")
        if "svm_rbf" in r:
            print(f"{r['dataset']:<14} {'svm_rbf':<8} {r['svm_rbf']:>9.4f}")
        print(f"{r['dataset']:<14} {'(all)':<8} {'':>9} {'':>8}  {r['total_seconds']:>9.1f}")
    (root / "accuracy.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
