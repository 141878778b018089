"""The model `mlflow models serve` answers with: what a caller wants, not raw logits.

A classifier answers one row per input: ``class`` (its name, from model.json's ``classes``),
``class_index`` and one probability column per class name; a regressor its target in its
own units (expm1 of the log1p the network outputs, or its output where it learns the target
on its own scale, as `reprolab predict` prints it), in a
column named after it. A row may be given flat (a tabular model's features, or an image's
pixels row by row): it is reshaped to the network's input.

The registered version is an MLflow pyfunc *from code* (``served_model.py``, run by `mlflow
models serve`, calls :func:`load_served` and :func:`answer`): it holds that file and the
state dict + model.json as artifacts, nothing pickled; `reprolab predict` never loads it
(it downloads the two files and loads the weights only). The DVC model (model.pt) is the
bare network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

# The file MLflow runs to serve a classifier or regressor (MLflow's "models from code").
SERVED_CODE = Path(__file__).with_name("served_model.py")


class Served(nn.Module):
    """``log``: a regressor's network outputs log1p of its target (else the target)."""

    def __init__(
        self, network: nn.Module, input_shape: tuple[int, ...], task: str, log: bool = True
    ) -> None:
        super().__init__()
        self.network, self.input_shape, self.task = network, tuple(input_shape), task
        self.log = log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x.float().reshape(-1, *self.input_shape))
        if self.task == "regression":
            return torch.expm1(out).clamp(min=0.0) if self.log else out
        return torch.softmax(out, dim=1)


def load_served(folder: Path) -> tuple[Served, dict]:
    """The served network of ``folder``'s model.json + model.pt (weights only), and
    model.json's contents (task, classes, the regressor's output)."""
    from reprolab.learn.checkpoints import learns_log1p, load_model

    network, info = load_model(folder, "cpu", shown=str(folder))
    task = info.get("task", "classification")
    served = Served(network, info["input_shape"], task, learns_log1p(info))
    return served.eval(), info


def target_name(about: dict) -> str:
    """A regressor's answer column: the target model.json's ``output`` names (``log1p(y)``
    or ``y``)."""
    output = str(about.get("output") or "prediction")
    return output[len("log1p(") : -1] if output.startswith("log1p(") else output


def answer(served: Served, rows, about: dict):
    """The served answer to ``rows`` (an array, or a DataFrame of numbers) as a DataFrame."""
    import pandas as pd

    x = torch.from_numpy(np.asarray(rows, dtype=np.float32))
    with torch.no_grad():
        out = served(x).numpy()
    if about.get("task") == "regression":
        return pd.DataFrame({target_name(about): out[:, 0].astype(np.float64)})
    classes = [str(c) for c in about["classes"]]
    index = out.argmax(axis=1)
    columns = {"class": [classes[i] for i in index], "class_index": index.astype(np.int64)}
    columns |= {name: out[:, i].astype(np.float64) for i, name in enumerate(classes)}
    return pd.DataFrame(columns)
