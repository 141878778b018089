"""Does tuning earn its budget? The pruners on one study's budget, and tuned against untuned.

Per dataset (digits, embedded; MNIST from a mirror of its original files), in a scratch
workspace split as the pipeline splits it, the same seeded Optuna study (the pipeline's
sampler, budget loop and trial training: tuning.worker.run_budget, learn's trial fitter) runs
once per ``tune.pruner.kind``. Each prints the best validation loss it found, the epochs it
spent (the cost), and the epochs it had spent when it first reached the median pruner's best.
Then each study's best (lr, weight decay) trains the final model as the train stage does
(``train.max_epochs``, early stopping, best epoch restored), and so does an untuned one with a
fixed sensible setting (Adam's default lr 1e-3, weight decay 1e-4); test accuracy compares
them. Not a test: minutes on 2 cores. Figures: docs/performance.md.

    PYTHONPATH=src python bench/tuning.py --dataset digits mnist --mirror ../shared/datasets
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from reprolab.core import numerics  # noqa: E402

numerics.apply("portable")  # as every stage: before torch loads

import optuna  # noqa: E402
from _trials import objective_of  # noqa: E402 (bench/, beside this script)
from optuna.storages import RDBStorage  # noqa: E402

from reprolab.core import paths  # noqa: E402
from reprolab.core.io import file_lock  # noqa: E402
from reprolab.core.params import validate_params  # noqa: E402
from reprolab.data.fetch import fetch_dataset, load_raw  # noqa: E402
from reprolab.data.split import write_splits  # noqa: E402
from reprolab.learn.context import ModelContext  # noqa: E402
from reprolab.learn.engine import fit, make_optimizer, predict  # noqa: E402
from reprolab.learn.objectives import OBJECTIVES  # noqa: E402
from reprolab.tuning.worker import open_study, run_budget, sampler_seed  # noqa: E402

PRUNERS = ("median", "successive_halving", "hyperband")
UNTUNED = {"lr": 1e-3, "weight_decay": 1e-4}
# Per dataset: the model tuned, its study budget, the trial rows and the final training.
SETUPS = {
    "digits": {
        "model": "cnn",
        "tune": {"n_trials": 16, "epochs": 9, "sampler_startup_trials": 5},
        "train": {"max_epochs": 40, "patience": 8},
    },
    "mnist": {
        "model": "mlp",
        "tune": {"n_trials": 16, "epochs": 9, "sampler_startup_trials": 5, "train_rows": 10000},
        "train": {"max_epochs": 10, "patience": 3},
        "split": {"val_fraction": 0.1},
    },
}
PRUNER_SETTINGS = {"n_startup_trials": 3, "n_warmup_steps": 2, "min_epochs": 1}


def bench_params(dataset: str, pruner: str, mirror: str | None) -> dict:
    setup = SETUPS[dataset]
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    model = setup["model"]
    raw["datasets"]["image"] = dataset
    raw["mirror"] = mirror
    raw["split"].update(setup.get("split", {}))
    raw["tune"].update(setup["tune"], pruner={"kind": pruner, **PRUNER_SETTINGS})
    raw["train"].update(setup["train"])
    raw["classifiers"] = {model: raw["classifiers"][model]}
    raw["regressors"], raw["generators"] = {}, {}
    return raw


def prepare(dataset: str, mirror: str | None) -> None:
    """data/raw and data/splits of ``dataset`` in the current folder, as the stages write them."""
    params = validate_params(bench_params(dataset, "median", mirror))
    fetch_dataset(dataset, paths.RAW / dataset, params.mirror)
    s = params.split
    write_splits(
        load_raw(dataset, paths.RAW / dataset),
        paths.splits_dir("image"),
        s.val_fraction,
        s.test_fraction,
        s.seed,
        s.official_test,
    )


def run_study(ctx: ModelContext, db: Path) -> list[dict]:
    """The model's study with ``ctx.tune``'s pruner; one row per finished trial, in order."""
    tune, objective = ctx.tune, objective_of(ctx)
    storage = RDBStorage(f"sqlite:///{db}")
    seed = sampler_seed(ctx.params.seed, ctx.name)
    study = open_study(ctx.name, seed, tune, storage)
    claim = lambda: file_lock(f"{db}.lock")  # noqa: E731
    run_budget(study, storage, claim, seed, tune, objective)
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        values = t.intermediate_values
        rows.append(
            {
                "lr": t.params["lr"],
                "weight_decay": t.params["weight_decay"],
                "state": t.state.name,
                "epochs": len(values),
                "best": min(values.values(), default=float("inf")),
            }
        )
    return rows


def test_accuracy(ctx: ModelContext, lr: float, weight_decay: float) -> float:
    """Train as the train stage does (early stopping on val, best epoch restored), then score
    the test split once."""
    model = ctx.new_model()
    fit(
        model,
        ctx.load("train"),
        ctx.load("val"),
        optimizer=make_optimizer(model, ctx.spec, lr, weight_decay),
        train_params=ctx.train,
        epochs=ctx.train.max_epochs,
        batch_size=ctx.spec.batch_size,
        seed=ctx.params.seed,
        task=ctx.task,
        progress=False,
    )
    test = ctx.load("test")
    return OBJECTIVES[ctx.task].metrics(predict(model, test), test.y)["accuracy"]


def bench_dataset(dataset: str, mirror: str | None) -> dict:
    model = SETUPS[dataset]["model"]
    prepare(dataset, mirror)
    studies, tuned = {}, {}
    for pruner in PRUNERS:
        ctx = ModelContext(validate_params(bench_params(dataset, pruner, mirror)), model)
        started = time.perf_counter()
        rows = run_study(ctx, Path(f"{pruner}.db").resolve())
        best = min(rows, key=lambda r: r["best"])
        studies[pruner] = {"trials": rows, "seconds": time.perf_counter() - started, "best": best}
        tuned[pruner] = test_accuracy(ctx, best["lr"], best["weight_decay"])
    tuned["untuned"] = test_accuracy(ctx, **UNTUNED)
    target = studies["median"]["best"]["best"]
    for study in studies.values():
        spent, reached = 0, None
        for row in study["trials"]:
            spent += row["epochs"]
            if reached is None and row["best"] <= target:
                reached = spent
        study["epochs"], study["epochs_to_median_best"] = spent, reached
    return {"dataset": dataset, "model": model, "studies": studies, "test_accuracy": tuned}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--mirror", default=str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "tuning.json"))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    mirror = str(Path(args.mirror).resolve()) if Path(args.mirror).is_dir() else None
    results = []
    for dataset in args.dataset:
        with tempfile.TemporaryDirectory(prefix=f"bench-tuning-{dataset}-") as scratch:
            here = os.getcwd()
            os.chdir(scratch)
            try:
                results.append(bench_dataset(dataset, mirror))
            finally:
                os.chdir(here)
        r = results[-1]
        tune = SETUPS[dataset]["tune"]
        print(
            f"\n{dataset}, {r['model']}: {tune['n_trials']} trials of up to {tune['epochs']} epochs"
        )
        print(f"{'pruner':<20} {'best val loss':>13} {'epochs':>7} {'to median best':>15} {'s':>6}")
        for pruner, s in r["studies"].items():
            to = s["epochs_to_median_best"]
            print(
                f"{pruner:<20} {s['best']['best']:>13.4f} {s['epochs']:>7} "
                f"{'never' if to is None else to:>15} {s['seconds']:>6.1f}"
            )
        print("test accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in r["test_accuracy"].items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
