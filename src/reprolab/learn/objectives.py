"""What differs between the learning tasks: the loss, the per-epoch validation score, the
final metrics and the test plot. The training loop (engine.fit) is the same for all.

- classification: cross-entropy; accuracy; macro-F1 and a confusion matrix on test.
- regression: the loss is RMSLE, the RMSE of log1p(prediction) against log1p(target) (the
  housing-price tutorial's loss): the network outputs log1p(y) (its output layer is scaled by
  the train split's log1p statistics), so ``expm1`` of the output is the prediction. A target
  with negative values (or ``csv.loss: rmse``) is learned on its own scale: RMSE, the network
  outputs y (scaled by the train split's target statistics).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from reprolab.core.kinds import LINEAR, regression_score
from reprolab.learn.metrics import (
    classification_metrics,
    confusion_rows,
    predicted_targets,
    regression_metrics,
)


class Classification:
    name = "classification"
    score = "accuracy"  # the validation score logged beside the loss each epoch
    test_plot = "confusion"  # plots/<test_plot>/<model>.csv, dvc's confusion template
    log = False  # its outputs are logits, never a log1p target (see Regression)

    def n_outputs(self, meta: dict) -> int:
        return len(meta["classes"])

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs, y)

    def loss_and_score(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """[loss, score] as one device tensor (read with the epoch's single sync)."""
        accuracy = (outputs.argmax(1) == y).float().mean()
        return torch.stack([self.loss(outputs, y), accuracy])

    def metrics(self, outputs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        # float64 softmax: float32 rows may not sum to one within the metrics' tolerance.
        probabilities = torch.softmax(outputs.double(), 1).cpu().numpy()
        return classification_metrics(y.cpu().numpy(), probabilities)

    def test_report(
        self, outputs: torch.Tensor, y: torch.Tensor, meta: dict
    ) -> tuple[dict, list[dict]]:
        """Test metrics and the rows of the test plot (the confusion matrix, one row per
        sample: its counts are not metrics a user compares across experiments)."""
        metrics = self.metrics(outputs, y)
        y_true, y_pred = y.cpu().numpy(), outputs.argmax(1).cpu().numpy()
        classes = meta["classes"]
        metrics["n_test"] = int(len(y_true))
        return metrics, confusion_rows(y_true, y_pred, classes)


class _ExactSqrt(torch.autograd.Function):
    """sqrt rounded exactly, so a loss has the same bits on every CPU. ATen's float sqrt (and
    pow(x, 0.5)) runs oneMKL VML, whose kernel under MKL_CBWR=COMPATIBLE seeds from RSQRTPS,
    an approximate instruction whose bits differ between Intel and AMD (it gave the tabular
    regressor other weights on an Intel Xeon than on the AMD EPYC that wrote dvc.lock;
    docs/reproducibility.md). numpy's sqrt is the IEEE instruction (SQRTSS/SQRTPS), exactly
    rounded on every CPU. CUDA's sqrt is IEEE-rounded already. The gradient is torch's own
    formula, grad / (2 sqrt(x)), with exact division."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if x.device.type == "cpu":
            root = torch.as_tensor(np.sqrt(x.detach().numpy()))
        else:
            root = torch.sqrt(x)
        ctx.save_for_backward(root)
        return root

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (root,) = ctx.saved_tensors
        return grad / (2 * root)


def exact_sqrt(x: torch.Tensor) -> torch.Tensor:
    """Exactly rounded sqrt with autograd (see :class:`_ExactSqrt`)."""
    return _ExactSqrt.apply(x)


class Regression:
    """``scale`` log1p: RMSLE, the network outputs log1p(y); linear: RMSE, it outputs y (a
    target with negative values, or ``csv.loss: rmse``)."""

    name = "regression"
    test_plot = "predictions"  # actual vs predicted, dvc's scatter template

    def __init__(self, scale: str) -> None:
        self.log = scale != LINEAR
        self.score = "rmsle" if self.log else "rmse"

    def n_outputs(self, meta: dict) -> int:
        return 1

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = torch.log1p(y) if self.log else y
        return exact_sqrt(nn.functional.mse_loss(outputs[:, 0], target))

    def loss_and_score(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.loss(outputs, y)
        return torch.stack([loss, loss])  # the loss is the score (RMSLE or RMSE)

    def predictions(self, outputs: torch.Tensor) -> np.ndarray:
        """Targets on their own scale (float64)."""
        return predicted_targets(outputs[:, 0].double().cpu().numpy(), self.log)

    def metrics(self, outputs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return regression_metrics(y.double().cpu().numpy(), self.predictions(outputs), self.log)

    def test_report(
        self, outputs: torch.Tensor, y: torch.Tensor, meta: dict
    ) -> tuple[dict, list[dict]]:
        metrics = self.metrics(outputs, y) | {"n_test": int(len(y))}
        rows = [
            {"actual": round(float(a), 6), "predicted": round(float(p), 6)}
            for a, p in zip(y.cpu().numpy(), self.predictions(outputs), strict=True)
        ]
        return metrics, rows


# Keyed by objective_key: the task, and for a regression on a linear scale its own key.
OBJECTIVES = {
    "classification": Classification(),
    "regression": Regression("log1p"),
    "regression_rmse": Regression(LINEAR),
}


def objective_key(task: str, meta: dict) -> str:
    """The OBJECTIVES key of ``task`` on the split described by ``meta`` (its meta.json)."""
    if task == "regression" and regression_score(meta) == "rmse":
        return "regression_rmse"
    return task
