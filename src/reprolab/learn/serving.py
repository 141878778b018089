"""The network `mlflow models serve` answers with: what a caller wants, not raw logits.

A classifier answers each row's class probabilities, in the order of the version's metadata
``classes`` (model.json's; the class is the largest), a regressor the predicted target in
its own units (expm1 of the log1p the network outputs, as `reprolab predict` prints it). A
row may be given flat (a tabular model's features, or an image's pixels row by row): it is
reshaped to the network's input. The DVC model (model.pt) is the bare network; this wrapper
lives only in the MLflow model's pytorch flavour.
"""

from __future__ import annotations

import torch
from torch import nn


class Served(nn.Module):
    def __init__(self, network: nn.Module, input_shape: tuple[int, ...], task: str) -> None:
        super().__init__()
        self.network, self.input_shape, self.task = network, tuple(input_shape), task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x.float().reshape(-1, *self.input_shape))
        if self.task == "regression":
            return torch.expm1(out).clamp(min=0.0)
        return torch.softmax(out, dim=1)
