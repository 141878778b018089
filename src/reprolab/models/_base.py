"""What every architecture module shares: the input standardisation and the build contract.

An architecture module defines ``Options`` (a pydantic model of its params.yaml ``options``)
and ``build(options, input_shape, n_outputs) -> nn.Module``. ``build_model`` wraps that
core in ``Standardize`` so a saved or served model takes raw pixel/feature values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from reprolab.core import registry


class StrictOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Standardize(nn.Module):
    """(x - mean) / std per channel, with the train split's statistics as buffers."""

    def __init__(self, mean: list[float], std: list[float], n_dims: int) -> None:
        super().__init__()
        shape = (1, len(mean)) + (1,) * (n_dims - 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One new tensor per batch instead of two (the division reuses the difference's
        # memory); the same float ops in the same order as (x - mean) / std, so bit-equal.
        return x.sub(self.mean).div_(self.std)


class OutputScale(nn.Module):
    """y * std + mean: a regressor's core learns a standardised target, the model outputs
    it on the scale it is learned on (log1p, or the target's own); the train split's
    statistics are buffers."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a trained model from its state_dict."""

    arch: str
    options: dict
    input_shape: tuple[int, ...]
    n_outputs: int
    mean: list[float]
    std: list[float]
    # Regression: (mean, std) of the train split's learned targets (log1p or linear).
    target_scale: tuple[float, float] | None = None

    def to_json(self) -> dict:
        data = asdict(self) | {"input_shape": list(self.input_shape)}
        if self.target_scale is None:
            del data["target_scale"]  # classifiers' model.json stays as it was
        else:
            data["target_scale"] = list(self.target_scale)
        return data

    @classmethod
    def from_json(cls, data: dict) -> ModelSpec:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        scale = fields.get("target_scale")
        return cls(
            **fields
            | {
                "input_shape": tuple(data["input_shape"]),
                "target_scale": None if scale is None else tuple(scale),
            }
        )


def build_model(spec: ModelSpec) -> nn.Sequential:
    """Standardize -> the arch's core -> (regression) OutputScale."""
    module = registry.model_module(spec.arch)
    options = module.Options.model_validate(spec.options)
    core = module.build(options, spec.input_shape, spec.n_outputs)
    layers = [Standardize(spec.mean, spec.std, len(spec.input_shape)), core]
    if spec.target_scale is not None:
        layers.append(OutputScale(*spec.target_scale))
    return nn.Sequential(*layers)


def build_saved(spec: ModelSpec) -> nn.Sequential:
    """A model for saved weights to be loaded into: build_model with the arch's init-only
    options (its ``INIT_ONLY``, e.g. resnet18's pretrained ``weights``) at their defaults.
    The saved weights replace the initial ones anyway, so loading a model (evaluate, a
    scorer, predict from a registry version on another machine) never reads a weights
    file or downloads anything."""
    init_only = getattr(registry.model_module(spec.arch), "INIT_ONLY", ())
    options = {k: v for k, v in spec.options.items() if k not in init_only}
    return build_model(replace(spec, options=options))


def flat_features(features: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Size of ``features``' output for one input, so heads fit any image size."""
    was_training = features.training
    features.eval()  # keep BatchNorm running statistics untouched by the probe
    with torch.no_grad():
        size = int(features(torch.zeros(1, *input_shape)).numel())
    features.train(was_training)
    return size
