"""Classification and regression metrics computed once, after the loop, from gathered outputs,
and the Fréchet distance between two Gaussians (the generative score; see reprolab.learn.features).

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


def regression_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, log: bool = True
) -> dict[str, float]:
    """RMSLE (the loss; lower is better), RMSE and R² on the target's own scale; on a linear
    scale (``log`` False: targets may be negative) no RMSLE, and RMSE is the loss.

    ``loss`` is the task's loss, so every task's metrics carry a ``loss``."""
    y_true, y_pred = y_true.astype(np.float64), y_pred.astype(np.float64)
    residual = float(np.sum((y_true - y_pred) ** 2))
    total = float(np.sum((y_true - y_true.mean()) ** 2))
    rmse = round(float(np.sqrt(residual / len(y_true))), 6)
    r2 = round(1.0 - residual / total if total > 0 else 0.0, 6)
    if not log:
        return {"rmse": rmse, "r2": r2, "loss": rmse}
    rmsle = round(float(np.sqrt(np.mean((np.log1p(y_pred) - np.log1p(y_true)) ** 2))), 6)
    return {"rmsle": rmsle, "rmse": rmse, "r2": r2, "loss": rmsle}


def predicted_targets(outputs: np.ndarray, log: bool) -> np.ndarray:
    """A regressor's outputs as targets: expm1 of its log1p outputs, never below zero (RMSLE),
    or the outputs themselves (a linear scale)."""
    return np.clip(np.expm1(outputs), 0.0, None) if log else outputs


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)): the Fréchet (2-Wasserstein) distance
    between N(mu1, S1) and N(mu2, S2), squared, in float64; FID is this on network features.

    tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of
    S1^(1/2) S2 S1^(1/2), a symmetric PSD matrix similar to S1 S2. Two symmetric
    eigendecompositions replace a general ``sqrtm``, which is slower and turns complex or
    inaccurate on the singular covariances of few samples in many dimensions; eigenvalues
    that rounding made slightly negative are clipped to zero.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"frechet_distance: means of shape (d,) and covariances (d, d) expected, got "
            f"{mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}"
        )
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    middle = root1 @ s2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return max(0.0, float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * cross))
