"""A small CNN with BatchNorm and Dropout: two conv-BN-ReLU pairs per stage, max-pooled."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from reprolab.models._base import StrictOptions, flat_features

INPUTS = ("image",)  # convolutions over (C, H, W) images


class Options(StrictOptions):
    width: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.25, ge=0.0, lt=1.0)


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


def build(options: Options, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    w = options.width
    features = nn.Sequential(
        *_conv_bn(input_shape[0], w),
        *_conv_bn(w, w),
        nn.MaxPool2d(2),
        *_conv_bn(w, 2 * w),
        *_conv_bn(2 * w, 2 * w),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(options.dropout),
    )
    return nn.Sequential(
        features,
        nn.Linear(flat_features(features, input_shape), 128),
        nn.ReLU(),
        nn.Dropout(options.dropout),
        nn.Linear(128, n_outputs),
    )
