"""Classification metrics computed once, after the loop, from gathered outputs."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    y_pred = probabilities.argmax(1)
    labels = np.arange(probabilities.shape[1])
    return {
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 6),
        "macro_f1": round(float(f1_score(y_true, y_pred, average="macro", labels=labels)), 6),
        "loss": round(float(log_loss(y_true, probabilities, labels=labels)), 6),
    }


def confusion_rows(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> list[dict]:
    """One row per sample (actual, predicted), the layout `dvc plots`' confusion template reads."""
    return [
        {"actual": classes[int(a)], "predicted": classes[int(p)]}
        for a, p in zip(y_true, y_pred, strict=True)
    ]


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> list[list[int]]:
    return confusion_matrix(y_true, y_pred, labels=np.arange(n_classes)).tolist()
