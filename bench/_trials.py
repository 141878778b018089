"""The benches' Optuna objective: the pipeline's trial training (learn's trial fitter) with
lr and weight decay drawn as the tune stage draws them, pruned on the validation loss, and
no MLflow. Import it after ``numerics.apply`` (it loads torch)."""

from __future__ import annotations

from collections.abc import Callable

import optuna

from reprolab.learn.context import ModelContext
from reprolab.learn.tasks import get_task


def objective_of(ctx: ModelContext) -> Callable[[optuna.Trial], float]:
    fit_trial = get_task(ctx.task).trial_fitter(ctx)
    tune = ctx.tune

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", tune.lr.low, tune.lr.high, log=True)
        wd = trial.suggest_float(
            "weight_decay", tune.weight_decay.low, tune.weight_decay.high, log=True
        )

        def report(epoch: int, row: dict[str, float]) -> None:
            trial.report(row["val_loss"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        return fit_trial(lr, wd, report, f"trial {trial.number}")[0]

    return objective
