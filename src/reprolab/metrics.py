"""Classification and regression metrics computed once, after the loop, from gathered outputs.

Plain numpy (checked against scikit-learn in tests/test_metrics.py): importing
sklearn.metrics costs ~1.7 s in every stage process, more than the metrics themselves.
"""

from __future__ import annotations

import numpy as np


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """counts[actual, predicted]."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (y_true, y_pred), 1)
    return counts


def macro_f1(counts: np.ndarray) -> float:
    tp = np.diag(counts).astype(np.float64)
    predicted, actual = counts.sum(0), counts.sum(1)
    denominator = predicted + actual
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return float(f1.mean())


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    n_classes = probabilities.shape[1]
    counts = confusion_counts(y_true, probabilities.argmax(1), n_classes)
    eps = np.finfo(np.float64).eps
    picked = np.clip(probabilities[np.arange(len(y_true)), y_true], eps, 1.0)
    return {
        "accuracy": round(float(np.trace(counts) / counts.sum()), 6),
        "macro_f1": round(macro_f1(counts), 6),
        "loss": round(float(-np.log(picked).mean()), 6),
    }


def confusion_rows(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> list[dict]:
    """One row per sample (actual, predicted), the layout `dvc plots`' confusion template reads."""
    return [
        {"actual": classes[int(a)], "predicted": classes[int(p)]}
        for a, p in zip(y_true, y_pred, strict=True)
    ]


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """RMSLE (the loss; lower is better), RMSE and R² on the target's own scale.

    ``loss`` is RMSLE too, so every task's metrics carry a ``loss``."""
    y_true, y_pred = y_true.astype(np.float64), y_pred.astype(np.float64)
    rmsle = float(np.sqrt(np.mean((np.log1p(y_pred) - np.log1p(y_true)) ** 2)))
    residual = float(np.sum((y_true - y_pred) ** 2))
    total = float(np.sum((y_true - y_true.mean()) ** 2))
    return {
        "rmsle": round(rmsle, 6),
        "rmse": round(float(np.sqrt(residual / len(y_true))), 6),
        "r2": round(1.0 - residual / total if total > 0 else 0.0, 6),
        "loss": round(rmsle, 6),
    }
