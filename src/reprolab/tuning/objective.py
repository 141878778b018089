"""The Optuna objective: lr and weight decay drawn log-uniform, the task's trial training,
one nested MLflow run per trial with its epochs, pruning on the task's objective."""

from __future__ import annotations

import logging
from collections.abc import Callable

import optuna

from reprolab.core.errors import DivergedError
from reprolab.learn.context import ModelContext
from reprolab.learn.tasks import get_task
from reprolab.tracking.runs import Tracker

log = logging.getLogger(__name__)


def make_objective(
    ctx: ModelContext, tracker: Tracker, tags: dict[str, str]
) -> Callable[[optuna.Trial], float]:
    """Optuna's objective for ``ctx``'s model: each trial an MLflow run nested under the tune
    execution's run (``tracker.run_id``), its curve reported for pruning."""
    tune = ctx.tune
    task = get_task(ctx.task)
    fit_trial, key = task.trial_fitter(ctx), task.objective

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", tune.lr.low, tune.lr.high, log=True)
        weight_decay = trial.suggest_float(
            "weight_decay", tune.weight_decay.low, tune.weight_decay.high, log=True
        )
        run_id = tracker.start_child(tracker.run_id, f"trial-{trial.number}", tags)
        trial.set_user_attr("mlflow_run_id", run_id)
        tracker.log(run_id, params={"lr": lr, "weight_decay": weight_decay, "trial": trial.number})

        def report(epoch: int, row: dict[str, float]) -> None:
            tracker.log(run_id, metrics={k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            trial.report(row[key], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"{key} {row[key]:.4f} at epoch {epoch}")

        try:
            best_value, best_epoch = fit_trial(
                lr, weight_decay, report, f"{ctx.name} trial {trial.number}"
            )
        except (optuna.TrialPruned, DivergedError) as stopped:
            reason = str(stopped)
            trial.set_user_attr("pruned_reason", reason)
            tracker.client.set_tag(run_id, "reprolab.pruned_reason", reason)
            tracker.end(run_id, "KILLED")
            log.warning("%s trial %d pruned: %s", ctx.name, trial.number, reason)
            raise optuna.TrialPruned(reason) from None
        except BaseException:
            tracker.end(run_id, "FAILED")
            raise
        trial.set_user_attr("best_epoch", best_epoch)
        tracker.log(run_id, metrics={f"best_{key}": best_value})
        tracker.end(run_id, "FINISHED")
        return best_value

    return objective
