"""The one final test evaluation of a trained model: the only reader of the test split."""

from __future__ import annotations

from reprolab.core import paths
from reprolab.core.io import write_json, write_tsv
from reprolab.learn.checkpoints import load_model
from reprolab.learn.context import ModelContext
from reprolab.learn.engine import predict
from reprolab.learn.tasks.supervised import TASKS
from reprolab.tracking.runs import Tracker


def evaluate_model(ctx: ModelContext, tags: dict[str, str]) -> dict:
    model, info = load_model(paths.model_dir(ctx.name), ctx.device)
    test = ctx.load("test")
    task = TASKS[ctx.task]
    metrics, rows = task.test_report(predict(model, test), test.y, ctx.meta)
    write_json(paths.METRICS / ctx.name / "test.json", metrics)
    write_tsv(paths.PLOTS / task.test_plot / f"{ctx.name}.csv", rows, sep=",")

    tracker = Tracker(ctx.dataset, ctx.name, info["study"])
    parent = tracker.parent_run_id(tags)
    tracker.log(
        parent,
        metrics={
            f"test_{k}": v for k, v in metrics.items() if isinstance(v, float) and k != "n_test"
        },
    )
    tracker.end(parent)
    return metrics
