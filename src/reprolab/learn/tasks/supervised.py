"""Classification and regression: engine.fit with the task's objective (learn.objectives),
the final model saved and registered, and the one test evaluation."""

from __future__ import annotations

import time

from reprolab.core import paths
from reprolab.core.io import write_json, write_tsv
from reprolab.learn import distributed
from reprolab.learn.checkpoints import learns_log1p, load_model, model_metadata, save_model
from reprolab.learn.context import ModelContext
from reprolab.learn.engine import fit, make_optimizer, predict
from reprolab.learn.loop import EpochCallback
from reprolab.learn.objectives import OBJECTIVES
from reprolab.learn.serving import SERVED_CODE, Served, answer
from reprolab.learn.tasks._base import Task, TrialFit, describe_run
from reprolab.tracking.models import FromCode, log_final_model
from reprolab.tracking.runs import log_test_metrics, stage_execution
from reprolab.tracking.tags import flatten


class SupervisedTask(Task):
    """A network trained on (x, y) with the loss of its objective (``OBJECTIVES[name]``, or
    for a regression on a linear scale its own: ``ModelContext.objective``)."""

    objective = "val_loss"
    # learn.engine.fit's: early stopping, schedule, kernels, compile, augmentation.
    trial_train_keys = ("patience", "scheduler", "step", "deterministic", "compile", "augment")
    distributed = True

    def __init__(self, name: str) -> None:
        self.name = name

    def trial_fitter(self, ctx: ModelContext) -> TrialFit:
        train, val = ctx.trial_train(), ctx.load("val")

        def fit_trial(
            lr: float, weight_decay: float, on_epoch: EpochCallback, desc: str
        ) -> tuple[float, int]:
            model = ctx.new_model()
            result = fit(
                model,
                train,
                val,
                optimizer=make_optimizer(model, ctx.spec, lr, weight_decay),
                train_params=ctx.train,
                epochs=ctx.tune.epochs,
                batch_size=ctx.spec.batch_size,
                seed=ctx.params.seed,
                task=ctx.objective,
                on_epoch=on_epoch,
                desc=desc,
            )
            return result.best_value, result.best_epoch

        return fit_trial

    def train_final(self, ctx: ModelContext, best: dict, tags: dict[str, str]) -> dict | None:
        """Train on train with early stopping on val; write model, curves and val metrics.
        Under torchrun every rank trains; rank 0 writes and returns the metrics, others None."""
        p = ctx.params
        train, val = ctx.load("train"), ctx.load("val")
        model = ctx.new_model()
        started = time.perf_counter()
        result = fit(
            model,
            train,
            val,
            optimizer=make_optimizer(model, ctx.spec, best["lr"], best["weight_decay"]),
            train_params=ctx.train,
            epochs=ctx.train.max_epochs,
            batch_size=ctx.spec.batch_size,
            seed=p.seed,
            task=ctx.objective,
            desc=f"train {ctx.name}",
        )
        # Wall-clock time goes to MLflow only: DVC outputs must be byte-equal across reruns.
        train_seconds = time.perf_counter() - started
        if not distributed.is_main():
            return None  # under torchrun, rank 0 alone evaluates, writes and logs
        val_metrics = OBJECTIVES[ctx.objective].metrics(predict(model, val), val.y)
        run_record = describe_run(ctx, result, best, model)
        folder = paths.model_dir(ctx.name)
        about = model_metadata(ctx.meta, float(train.x.max()))
        extra = {"study": best["study"], "model": ctx.name, **about, **ctx.environment}
        weights_md5 = save_model(model, ctx.arch_spec, folder, extra)
        write_tsv(paths.PLOTS / "curves" / f"{ctx.name}.tsv", result.history)
        metrics = {"val": val_metrics, "train": run_record}
        write_json(paths.METRICS / ctx.name / "train.json", metrics)
        logged = {**{f"val_{k}": v for k, v in val_metrics.items()}, "train_seconds": train_seconds}
        _log_final(
            ctx, model, best, tags, logged, run_record, result.history, val, about, weights_md5
        )
        return metrics

    def evaluate(self, ctx: ModelContext, tags: dict[str, str]) -> dict:
        trained_by = f"train{paths.STAGE_SUFFIX[ctx.group]}"  # load_model adds @<model>
        model, info = load_model(paths.model_dir(ctx.name), ctx.device, stage=trained_by)
        run = stage_execution(ctx, "evaluate", info["study"], tags)
        test = ctx.load("test")
        task = OBJECTIVES[ctx.objective]
        metrics, rows = task.test_report(predict(model, test), test.y, ctx.meta)
        write_json(paths.METRICS / ctx.name / "test.json", metrics)
        plot = paths.TEST_PLOT.get(ctx.group, task.test_plot)
        write_tsv(paths.PLOTS / plot / f"{ctx.name}.csv", rows, sep=",")

        logged = {k: v for k, v in metrics.items() if isinstance(v, float) and k != "n_test"}
        log_test_metrics(run, logged)
        return metrics


def _log_final(ctx, model, best, tags, logged, run_record, history, val, about, weights_md5):
    train_params = flatten("train", ctx.train.model_dump(mode="json"))
    log = learns_log1p(about)
    served = Served(model.to("cpu"), ctx.arch_spec.input_shape, ctx.task, log).eval()
    example = val.x[:4].float().cpu().numpy()
    log_final_model(
        ctx,
        best,
        tags,
        history=history,
        logged=logged,
        served=FromCode(SERVED_CODE, answer(served, example, about)),
        example=example,
        about=about,
        weights_md5=weights_md5,
        params={**train_params, **{k: str(v) for k, v in run_record.items()}},
        folder=paths.model_dir(ctx.name),
    )
