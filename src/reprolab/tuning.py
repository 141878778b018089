"""Optuna tuning of learning rate and weight decay on the validation split.

- Storage: an SQLite file under the workspace root (outside DVC outputs), or any RDB URL
  from ``REPROLAB_OPTUNA_STORAGE``.
- Study name: dataset, model and a fingerprint of everything the objective depends on
  (params it reads, split checksums, the code loaded). A killed run resumes its study; a
  change of code, data or params starts a fresh one.
- Budget: finished trials (complete or pruned) count toward ``n_trials`` across resumes
  (MaxTrialsCallback); a trial whose process died is failed by the heartbeat check and
  retried with the same params (RetryFailedTrialCallback).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from reprolab.context import ModelContext
from reprolab.engine import DivergedError, fit, make_optimizer
from reprolab.paths import workspace_root
from reprolab.tracking import Tracker, flatten

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Heartbeats and stale-trial retry are the documented resume pattern; optuna still flags
# them experimental, which says nothing a user of this pipeline can act on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
HEARTBEAT_S = 5


def storage_url() -> str:
    if os.environ.get("REPROLAB_OPTUNA_STORAGE"):
        return os.environ["REPROLAB_OPTUNA_STORAGE"]
    folder = workspace_root() / ".optuna"
    folder.mkdir(exist_ok=True)
    return f"sqlite:///{folder / 'studies.db'}"


def code_fingerprint() -> str:
    """Hash of every reprolab module loaded in this process, plus the running script."""
    package = Path(__file__).parent
    files = {
        Path(m.__file__).resolve()
        for m in list(sys.modules.values())
        if getattr(m, "__file__", None) and Path(m.__file__).resolve().is_relative_to(package)
    }
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if main:
        files.add(Path(main).resolve())
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name + str(p)):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def study_name(ctx: ModelContext) -> str:
    p = ctx.params
    inputs = {
        "seed": p.seed,
        "dataset": ctx.dataset,
        "threads": p.threads,
        "device": ctx.device.type,
        "tune": ctx.tune.model_dump(mode="json"),
        "train": ctx.train.model_dump(
            mode="json",
            include={"patience", "scheduler", "step", "deterministic", "compile", "augment"},
        ),
        "model": ctx.spec.model_dump(mode="json"),
        "data": ctx.data_md5(("train", "val")),
        "code": code_fingerprint(),
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    return f"{ctx.dataset}.{ctx.name}.{digest}"


@dataclass
class TuneResult:
    study: optuna.Study
    best_params: dict
    trials: list[dict]


class _FailAndRetry(RetryHeartbeatStaleTrialCallback):
    """A trial whose worker died: close its MLflow run as FAILED, then re-queue its params."""

    def __init__(self, tracker: Tracker) -> None:
        super().__init__(max_retry=2)
        self.tracker = tracker

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id and self.tracker.is_active(run_id):
            self.tracker.end(run_id, "FAILED")
        super().__call__(study, trial)


def open_study(name: str, seed: int, tune_params, tracker: Tracker) -> optuna.Study:
    url = storage_url()
    # SQLite: wait for the writer lock instead of failing with "database is locked".
    sqlite_wait = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    storage = RDBStorage(
        url,
        engine_kwargs=sqlite_wait,
        heartbeat_interval=HEARTBEAT_S,
        grace_period=2 * HEARTBEAT_S,
        heartbeat_stale_trial_callback=_FailAndRetry(tracker),
    )
    return optuna.create_study(
        study_name=name,
        storage=storage,
        direction="minimize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=tune_params.sampler_startup_trials
        ),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=tune_params.pruner.n_startup_trials,
            n_warmup_steps=tune_params.pruner.n_warmup_steps,
        ),
    )


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


def tune_model(ctx: ModelContext, tags: dict[str, str]) -> TuneResult:
    """Run (or resume) the study until ``n_trials`` trials have finished."""
    p, tune = ctx.params, ctx.tune
    train, val = ctx.load("train"), ctx.load("val")
    name = study_name(ctx)
    tracker = Tracker(ctx.dataset, ctx.name, name)
    parent = tracker.parent_run_id(tags)
    tracker.log(
        parent,
        params={
            **flatten("model", ctx.spec.model_dump(mode="json")),
            **flatten("tune", tune.model_dump(mode="json")),
            "seed": p.seed,
            "study": name,
        },
    )
    study = open_study(name, p.seed, tune, tracker)
    optuna.storages.fail_stale_trials(study)

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", tune.lr.low, tune.lr.high, log=True)
        weight_decay = trial.suggest_float(
            "weight_decay", tune.weight_decay.low, tune.weight_decay.high, log=True
        )
        run_id = tracker.start_child(parent, f"trial-{trial.number}", tags)
        trial.set_user_attr("mlflow_run_id", run_id)
        tracker.log(run_id, params={"lr": lr, "weight_decay": weight_decay, "trial": trial.number})
        model = ctx.new_model()

        def report(epoch: int, row: dict[str, float]) -> None:
            tracker.log(run_id, metrics={k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            trial.report(row["val_loss"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val_loss {row['val_loss']:.4f} at epoch {epoch}")

        try:
            result = fit(
                model,
                train,
                val,
                optimizer=make_optimizer(model, ctx.spec, lr, weight_decay),
                train_params=ctx.train,
                epochs=tune.epochs,
                batch_size=ctx.spec.batch_size,
                seed=p.seed,
                task=ctx.task,
                on_epoch=report,
                desc=f"trial {trial.number}",
            )
        except optuna.TrialPruned as pruned:
            trial.set_user_attr("pruned_reason", str(pruned))
            tracker.client.set_tag(run_id, "reprolab.pruned_reason", str(pruned))
            tracker.end(run_id, "KILLED")
            raise
        except DivergedError as diverged:
            trial.set_user_attr("pruned_reason", str(diverged))
            tracker.client.set_tag(run_id, "reprolab.pruned_reason", str(diverged))
            tracker.end(run_id, "KILLED")
            raise optuna.TrialPruned(str(diverged)) from None
        except BaseException:
            tracker.end(run_id, "FAILED")
            raise
        trial.set_user_attr("best_epoch", result.best_epoch)
        tracker.log(run_id, metrics={"best_val_loss": result.best_val_loss})
        tracker.end(run_id, "FINISHED")
        return result.best_val_loss

    remaining = tune.n_trials - len(finished_trials(study))
    if remaining > 0:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(
            objective,
            n_trials=remaining,
            callbacks=[MaxTrialsCallback(tune.n_trials, states=FINISHED)],
            show_progress_bar=sys.stderr.isatty(),
        )
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(
            f"study {name}: all {tune.n_trials} trials were pruned; widen tune.lr or raise "
            "tune.pruner.n_warmup_steps"
        )
    best = study.best_trial
    best_params = {
        "lr": best.params["lr"],
        "weight_decay": best.params["weight_decay"],
        "best_trial": best.number,
        "best_val_loss": best.value,
        "study": name,
    }
    tracker.log(
        parent,
        metrics={"best_val_loss": best.value},
        params={"best.lr": best.params["lr"], "best.weight_decay": best.params["weight_decay"]},
    )
    tracker.end(parent)
    return TuneResult(study=study, best_params=best_params, trials=trials_table(study))


def trials_table(study: optuna.Study) -> list[dict]:
    rows = []
    for t in sorted(finished_trials(study), key=lambda t: t.number):
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "value": t.value
                if t.value is not None
                else t.intermediate_values.get(max(t.intermediate_values, default=0), float("nan")),
                "lr": t.params["lr"],
                "weight_decay": t.params["weight_decay"],
                "epochs": len(t.intermediate_values),
            }
        )
    return rows
