"""AlexNet's layout (features / avgpool / classifier with Dropout), sized for 8-32 px inputs.

torchvision's AlexNet opens with an 11x11 stride-4 conv and three 3x3 stride-2 pools for
224 px images; here the first conv is 3x3 stride 1 and the pools are 2x2, so an 8x8 digit
still reaches the classifier with a 1x1 map. Widths scale with ``width`` (1.0 = 64..256).
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from reprolab.models._base import StrictOptions

INPUTS = ("image",)  # convolutions over (C, H, W) images


class Options(StrictOptions):
    width: float = Field(default=0.5, gt=0.0)
    dropout: float = Field(default=0.5, ge=0.0, lt=1.0)
    hidden: int = Field(default=1024, ge=1)


def build(options: Options, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    c1, c2, c3, c4 = (max(1, round(k * options.width)) for k in (64, 192, 384, 256))
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], c1, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(c2, c3, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(c3, c4, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(c4, c4, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )
    classifier = nn.Sequential(
        nn.Dropout(options.dropout),
        nn.Linear(c4 * 2 * 2, options.hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(options.dropout),
        nn.Linear(options.hidden, options.hidden),
        nn.ReLU(inplace=True),
        nn.Linear(options.hidden, n_outputs),
    )
    return nn.Sequential(features, nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), classifier)
