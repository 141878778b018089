"""What deterministic parallel tuning costs: the batch barrier's throughput, and the search
quality of batches against sequential TPE.

On the embedded digits data, split as the pipeline splits it, one model's study (the
pipeline's objective: learn's trial fitter, median pruner) runs with

* **batched** workers (tuning.worker.run_budget: slots in batches of ``--batch``, a slot
  claimed once the earlier batches have finished), 1, 2 and 4 workers;
* **unsynchronised** workers, as tuning ran before batches: each worker claims the next trial
  while running + finished trials are fewer than the budget, its TPE seeded with the seed +
  the trials claimed so far and seeing every finished trial, Optuna's pruner on all trials;
  the same 1, 2 and 4 workers.

It prints trials per minute (from the first trial's start to the last one's end, so process
start-up is left out; the median of ``--rounds`` alternating runs) and the batched workers'
ratio to as many unsynchronised ones. Then the search quality: the best validation loss of
the study for the same budget with ``tune.batch`` 1 (sequential TPE) and ``--batch``, over
``--seeds`` seeds.
Workers compute with ``threads: 1`` (2 cores here). Not a test: minutes on 2 cores.

    PYTHONPATH=src python bench/parallel_tuning.py [--model cnn] [--trials 12] [--batch 4]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from reprolab.core import numerics  # noqa: E402

numerics.apply("portable")  # as every stage: before torch loads (spawned workers too)

import optuna  # noqa: E402
from _trials import objective_of  # noqa: E402 (bench/, beside this script)
from optuna.storages import RDBStorage  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from reprolab.core import paths  # noqa: E402
from reprolab.core.io import file_lock  # noqa: E402
from reprolab.core.params import validate_params  # noqa: E402
from reprolab.data.fetch import fetch_dataset, load_raw  # noqa: E402
from reprolab.data.split import write_splits  # noqa: E402
from reprolab.learn.context import ModelContext  # noqa: E402
from reprolab.tuning.batches import FINISHED  # noqa: E402
from reprolab.tuning.pruners import make_pruner  # noqa: E402
from reprolab.tuning.worker import open_study, run_budget, sampler_seed  # noqa: E402

WORKERS = (1, 2, 4)


def params_for(model: str, trials: int, batch: int, seed: int) -> dict:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["seed"], raw["threads"] = seed, 1
    raw["tune"].update(n_trials=trials, epochs=6, batch=batch, sampler_startup_trials=4)
    raw["tune"]["pruner"].update(kind="median", n_startup_trials=3, n_warmup_steps=2)
    raw["classifiers"] = {model: raw["classifiers"][model]}
    raw["regressors"], raw["generators"] = {}, {}
    return raw


def unsynchronised(study: optuna.Study, db: str, seed: int, ctx: ModelContext) -> None:
    """Tuning as it ran before batches (the baseline): no barrier, every trial sees all."""
    objective, tune = objective_of(ctx), ctx.tune
    study.pruner = make_pruner(tune, seed).inner  # Optuna's own, on every trial
    while True:
        with file_lock(f"{db}.lock"):
            states = [t.state for t in study.get_trials(deepcopy=False)]
            finished = sum(s in FINISHED for s in states)
            claimed = finished + states.count(TrialState.RUNNING)
            if finished >= tune.n_trials:
                return
            trial = None
            if claimed < tune.n_trials:
                study.sampler = optuna.samplers.TPESampler(
                    seed=(seed + claimed) % 2**32, n_startup_trials=tune.sampler_startup_trials
                )
                trial = study.ask()
        if trial is None:
            time.sleep(0.2)
            continue
        try:
            study.tell(trial, objective(trial))
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)


def worker(mode: str, raw: dict, model: str, db: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sys.stderr = open(f"{db}.{os.getpid()}.log", "w")  # noqa: SIM115 (the epoch lines)
    ctx = ModelContext(validate_params(raw), model)
    seed = sampler_seed(ctx.params.seed, ctx.name)
    with file_lock(f"{db}.lock"):  # workers creating the tables at once would race
        storage = RDBStorage(f"sqlite:///{db}", engine_kwargs={"connect_args": {"timeout": 60}})
        study = open_study("bench", seed, ctx.tune, storage)
    if mode == "batched":
        claim = lambda: file_lock(f"{db}.lock")  # noqa: E731
        run_budget(study, storage, claim, seed, ctx.tune, objective_of(ctx))
    else:
        unsynchronised(study, db, seed, ctx)


def run(mode: str, workers: int, raw: dict, model: str, db: Path) -> dict:
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=worker, args=(mode, raw, model, str(db))) for _ in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            log = Path(f"{db}.{p.pid}.log").read_text()[-3000:]
            raise SystemExit(f"{mode} worker of {workers} exited {p.exitcode}:\n{log}")
    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{db}")
    trials = study.get_trials(states=FINISHED)
    span = max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
    best = min(t.value for t in trials if t.state == TrialState.COMPLETE)
    return {"per_minute": len(trials) / span.total_seconds() * 60, "best": best}


def prepare(raw: dict) -> None:
    params = validate_params(raw)
    fetch_dataset("digits", paths.RAW / "digits", None)
    s = params.split
    write_splits(
        load_raw("digits", paths.RAW / "digits"),
        paths.splits_dir("image"),
        s.val_fraction,
        s.test_fraction,
        s.seed,
        s.official_test,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3, help="studies per batch size")
    parser.add_argument("--rounds", type=int, default=3, help="throughput runs per setting")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-parallel-tuning-") as scratch:
        os.chdir(scratch)
        prepare(params_for(args.model, args.trials, 1, 42))
        print(f"digits, {args.model}: {args.trials} trials of up to 6 epochs, median pruner")
        print(f"{'workers':>7} {'unsynchronised/min':>19} {'batched/min':>12} {'ratio':>6}")
        for n in WORKERS:
            raw = params_for(args.model, args.trials, args.batch, 42)
            base = run("unsynchronised", n, raw, args.model, Path(f"u{n}.db").resolve())
            batched = run("batched", n, raw, args.model, Path(f"b{n}.db").resolve())
            ratio = batched["per_minute"] / base["per_minute"]
            print(
                f"{n:>7} {base['per_minute']:>19.1f} {batched['per_minute']:>12.1f} {ratio:>6.2f}"
            )
        print(f"\nbest validation loss, {args.trials} trials, one worker, per seed:")
        found: dict[int, list[float]] = {1: [], args.batch: []}
        for seed in range(args.seeds):
            for batch in found:
                raw = params_for(args.model, args.trials, batch, seed)
                db = Path(f"q{batch}-{seed}.db").resolve()
                found[batch].append(run("batched", 1, raw, args.model, db)["best"])
        for batch, values in found.items():
            label = "sequential TPE (batch 1)" if batch == 1 else f"batch {batch}"
            shown = " ".join(f"{v:.4f}" for v in values)
            print(f"{label:<26} {shown}  median {statistics.median(values):.4f}")


if __name__ == "__main__":
    main()
