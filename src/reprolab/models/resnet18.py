"""torchvision's ResNet18 for transfer learning.

- ``weights``: ``none`` (random init; the offline default), ``imagenet`` (torchvision's
  IMAGENET1K_V1, downloaded to the torch hub cache when online), or the path of a ``.pth``
  state_dict of torchvision's resnet18 inside the workspace (relative to its root).
- ``freeze: all_but_head`` trains only the new head; ``none`` fine-tunes everything, with
  the backbone at ``lr * backbone_lr_factor`` (discriminative learning rates, the fast.ai
  advice: earlier layers move less than the new head).
- ``small_stem``: a 3x3 stride-1 first conv and no max-pool, for 8-32 px inputs.
- Grey inputs get a 1-channel first conv; pretrained RGB filters are summed over colour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from reprolab.core.errors import ModelBuildError
from reprolab.core.paths import workspace_root
from reprolab.models._base import StrictOptions

INPUTS = ("image",)  # convolutions over (C, H, W) images
INIT_ONLY = ("weights",)  # only the initial weights: a saved model is rebuilt without them


class Options(StrictOptions):
    weights: str = "none"
    freeze: Literal["all_but_head", "none"] = "none"
    backbone_lr_factor: float = Field(default=0.1, gt=0.0, le=1.0)
    small_stem: bool = True


def _pretrained_state(weights: str) -> dict[str, torch.Tensor] | None:
    if weights == "none":
        return None
    if weights == "imagenet":
        try:
            return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as err:  # offline: urllib raises several types
            raise ModelBuildError(
                f"resnet18 options.weights: 'imagenet' could not be downloaded ({err}); "
                "go online once (torch hub caches them) or set weights to a local .pth path"
            ) from None
    root = workspace_root()
    path = (root / weights).resolve()
    if Path(weights).is_absolute() or root.resolve() not in path.parents:
        raise ModelBuildError(
            f"resnet18 options.weights: {weights!r} is not a file path inside the workspace; "
            "copy the .pth into it (e.g. models/pretrained/, then `dvc add` it) and give "
            "that relative path"
        )
    if not path.is_file():
        raise ModelBuildError(f"resnet18 options.weights: file {weights!r} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)


def build(options: Options, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    net = resnet18(weights=None)
    state = _pretrained_state(options.weights)
    if state is not None:
        net.load_state_dict(state)
    channels = input_shape[0]
    if options.small_stem or channels != 3:
        old = net.conv1
        kernel, stride, padding = (3, 1, 1) if options.small_stem else (7, 2, 3)
        net.conv1 = nn.Conv2d(channels, 64, kernel, stride=stride, padding=padding, bias=False)
        if state is not None and not options.small_stem:
            net.conv1.weight.data = old.weight.data.sum(1, keepdim=True).repeat(1, channels, 1, 1)
        if options.small_stem:
            net.maxpool = nn.Identity()
    net.fc = nn.Linear(net.fc.in_features, n_outputs)
    if options.freeze == "all_but_head":
        for name, param in net.named_parameters():
            param.requires_grad = name.startswith("fc.")
    return net


def param_groups(core: nn.Module, options: Options) -> list[tuple[list[nn.Parameter], float]]:
    """(params, lr scale) per group: the new head at lr, the backbone at lr * factor."""
    trainable = [(n, p) for n, p in core.named_parameters() if p.requires_grad]
    head = [p for n, p in trainable if n.startswith("fc.")]
    backbone = [p for n, p in trainable if not n.startswith("fc.")]
    groups = [(head, 1.0)]
    if backbone:
        groups.append((backbone, options.backbone_lr_factor))
    return groups
