"""The one final test evaluation of a trained model: the only reader of the test split."""

from __future__ import annotations

from reprolab import paths
from reprolab.context import ModelContext
from reprolab.engine import class_probabilities
from reprolab.io import write_json, write_tsv
from reprolab.metrics import classification_metrics, confusion_counts, confusion_rows
from reprolab.tracking import Tracker
from reprolab.training import load_model


def evaluate_model(ctx: ModelContext, tags: dict[str, str]) -> dict:
    model, info = load_model(paths.model_dir(ctx.name), ctx.device)
    test = ctx.load("test")
    probabilities = class_probabilities(model, test)
    y_true = test.y.cpu().numpy()
    y_pred = probabilities.argmax(1)
    classes = ctx.meta["classes"]
    metrics = classification_metrics(y_true, probabilities)
    metrics["confusion_matrix"] = confusion_counts(y_true, y_pred, len(classes)).tolist()
    metrics["n_test"] = int(len(y_true))
    write_json(paths.METRICS / ctx.name / "test.json", metrics)
    write_tsv(
        paths.PLOTS / "confusion" / f"{ctx.name}.csv",
        confusion_rows(y_true, y_pred, classes),
        sep=",",
    )

    tracker = Tracker(ctx.params.dataset, ctx.name, info["study"])
    parent = tracker.parent_run_id(tags)
    tracker.log(
        parent,
        metrics={
            f"test_{k}": v for k, v in metrics.items() if k in ("accuracy", "macro_f1", "loss")
        },
    )
    tracker.end(parent)
    return metrics
