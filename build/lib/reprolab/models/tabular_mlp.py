"""The housing-price network of the tutorials: Linear layers with ReLU, Xavier-initialised,
for feature rows (N, F). Trained as a regressor on log1p targets (RMSLE)."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from reprolab.models._base import StrictOptions

INPUTS = ("tabular",)


class Options(StrictOptions):
    hidden: list[int] = Field(default=[64, 32], min_length=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


def build(options: Options, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    if len(input_shape) != 1:
        raise ValueError(f"tabular_mlp takes feature rows (F,), got input shape {input_shape}")
    layers: list[nn.Module] = []
    width = input_shape[0]
    for hidden in options.hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        if options.dropout:
            layers.append(nn.Dropout(options.dropout))
        width = hidden
    layers.append(nn.Linear(width, n_outputs))
    net = nn.Sequential(*layers)
    for module in net:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    return net
