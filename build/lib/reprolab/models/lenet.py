"""LeNet-5: two conv/pool stages and three fully connected layers.

On images under 20 px the second conv is padded so 8x8 digits still yield a feature map.
"""

from __future__ import annotations

from torch import nn

from reprolab.models._base import StrictOptions, flat_features

INPUTS = ("image",)  # convolutions over (C, H, W) images


class Options(StrictOptions):
    pass


def build(options: Options, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    channels, height = input_shape[0], input_shape[1]
    features = nn.Sequential(
        nn.Conv2d(channels, 6, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5, padding=0 if height >= 20 else 2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    return nn.Sequential(
        features,
        nn.Linear(flat_features(features, input_shape), 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, n_outputs),
    )
