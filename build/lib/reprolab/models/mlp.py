"""Multi-layer perceptron: flatten, then Linear-ReLU-Dropout blocks."""

from __future__ import annotations

import math

from pydantic import Field
from torch import nn

from reprolab.models._base import StrictOptions


class Options(StrictOptions):
    hidden: list[int] = Field(default=[256, 128], min_length=1)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)


def build(options: Options, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for hidden in options.hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(options.dropout)]
        width = hidden
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)
