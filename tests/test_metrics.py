"""The numpy metrics agree with scikit-learn's."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    mean_squared_error,
    mean_squared_log_error,
    r2_score,
)

from reprolab.learn.metrics import classification_metrics, confusion_counts, regression_metrics


def test_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + 2 * np.eye(4)[y] * rng.random((300, 1))
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = probabilities.argmax(1)
    ours = classification_metrics(y, probabilities)
    assert ours["accuracy"] == round(accuracy_score(y, pred), 6)
    assert ours["macro_f1"] == round(f1_score(y, pred, average="macro"), 6)
    assert abs(ours["loss"] - log_loss(y, probabilities)) < 1e-6
    assert (confusion_counts(y, pred, 4) == confusion_matrix(y, pred)).all()


def test_macro_f1_counts_an_absent_class_as_zero() -> None:
    y = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.2, 0.8, 0.0]])
    ours = classification_metrics(y, probabilities)
    expected = f1_score(
        y, probabilities.argmax(1), average="macro", labels=[0, 1, 2], zero_division=0
    )
    assert ours["macro_f1"] == round(expected, 6)


def test_regression_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y = rng.uniform(20, 350, 200)
    pred = np.clip(y + rng.normal(0, 30, 200), 0, None)
    ours = regression_metrics(y, pred)
    assert ours["rmsle"] == round(float(np.sqrt(mean_squared_log_error(y, pred))), 6)
    assert ours["rmse"] == round(float(np.sqrt(mean_squared_error(y, pred))), 6)
    assert ours["r2"] == round(float(r2_score(y, pred)), 6)
    assert ours["loss"] == ours["rmsle"]
