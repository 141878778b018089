"""Test accuracy per model against published figures, with the wall time of every stage.

Runs the real pipeline (`dvc repro evaluate@<each classifier> evaluate_baselines@image`, so
download, split, tune, train and the baselines too) in a fresh copy of this checkout per
dataset, with the dataset's preset (presets/<dataset>.yaml) and the mirror pointed at a folder
of original files. Prints test accuracy per model (the scikit-learn baselines included) and the
wall time of its stages. Not a test: it takes minutes per dataset on 2 cores.

    python bench/accuracy.py --dataset digits mnist fashion_mnist --mirror ../shared/datasets

Published figures: a small CNN with BatchNorm >= 99.2% on MNIST and >= 91.5% on
Fashion-MNIST, an MLP >= 98% on MNIST; on digits the best network should beat an RBF SVM on
the same split (98.9% for a stratified 80/20 split; here the pipeline's own `rbf_svm` baseline,
its C chosen on validation).
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

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from reprolab.core.checkout import copy_sources  # noqa: E402
from reprolab.core.presets import apply_preset  # noqa: E402

TARGETS = {("mnist", "cnn"): 0.995, ("fashion_mnist", "cnn"): 0.935, ("mnist", "mlp"): 0.98}
BASELINE = "rbf_svm"  # on digits the best network must beat the pipeline's own RBF SVM row


def fresh_copy(dest: Path) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    copy_sources(REPO, dest, exclude=("bench/",))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@reprolab.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "bench"], cwd=dest, check=True)
    return dest


def repro(workspace: Path, targets: list[str], log: Path) -> dict[str, float]:
    """``dvc repro <targets>`` (their upstream stages too); seconds per stage that ran, from
    the time each ``Running stage`` line appeared to the next."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    times: dict[str, float] = {}
    current, since = None, time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["dvc", "repro", *targets],
            cwd=workspace,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for line in proc.stdout:
            out.write(line)
            if line.startswith("Running stage '") or line.startswith("Use `dvc push`"):
                now = time.perf_counter()
                if current:
                    times[current] = now - since
                    print(f"  {current:<32} {times[current]:7.1f} s", flush=True)
                current, since = line.split("'")[1] if "'" in line else None, now
        if proc.wait():
            raise SystemExit(f"dvc repro failed in {workspace}; see {log}")
    return times


def run_dataset(dataset: str, mirror: str | None, root: Path) -> dict:
    """The preset's classifiers and the image baselines on ``dataset``, tuned, trained and
    tested by the real pipeline in a fresh copy of the checkout."""
    workspace = fresh_copy(root / dataset)
    params = apply_preset(dataset, workspace / "params.yaml", workspace / "presets")
    if mirror and params.get("mirror"):  # the copy lives elsewhere: make the mirror absolute
        params["mirror"] = str(Path(mirror).resolve())
        (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    models = list(params["classifiers"])
    targets = [f"evaluate@{m}" for m in models] + ["evaluate_baselines@image"]
    started = time.perf_counter()
    times = repro(workspace, targets, root / f"{dataset}.log")
    result = {
        "dataset": dataset,
        "stage_seconds": times,
        "total_seconds": time.perf_counter() - started,
        "threads": params["threads"],
        "networks": models,
    }
    result["models"] = {
        m: json.loads((workspace / f"metrics/{m}/test.json").read_text())["accuracy"]
        for m in models
    }
    baselines = json.loads((workspace / "metrics/baselines/image/test.json").read_text())
    for name in params["baselines"]["image"]:
        result["models"][name] = baselines[name]["accuracy"]
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
    print(f"\n{'dataset':<14} {'model':<20} {'test acc':>9} {'target':>8}  {'wall (s)':>9}")
    for r in results:
        best_net = max(r["models"][m] for m in r["networks"])
        for model, accuracy in r["models"].items():
            target = TARGETS.get((r["dataset"], model))
            mark = "" if target is None else ("  ok" if accuracy >= target else "  BELOW")
            if r["dataset"] == "digits" and model == BASELINE:
                mark = "  beaten" if best_net > accuracy else "  NOT BEATEN"
            tgt = "" if target is None else f"{target:.4f}"
            stages = sum(s for k, s in r["stage_seconds"].items() if k.endswith(f"@{model}"))
            wall = f"{stages:9.1f}" if stages else f"{'':>9}"
            print(f"{r['dataset']:<14} {model:<20} {accuracy:>9.4f} {tgt:>8}  {wall}{mark}")
        total = r["total_seconds"]
        print(f"{r['dataset']:<14} {'(all stages)':<20} {'':>9} {'':>8}  {total:>9.1f}")
    (root / "accuracy.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
