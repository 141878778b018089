"""DCGAN (Radford et al. 2016, as in PyTorch's DCGAN tutorial), sized to the dataset's images.

Generator: noise (N, latent, 1, 1) -> ConvTranspose2d-BatchNorm-ReLU blocks that double the
size -> a ConvTranspose2d to the image channels and Tanh, so images come out in [-1, 1].
Discriminator, its mirror: Conv2d-LeakyReLU(0.2) (no BatchNorm on the input, as in the
tutorial), Conv2d-BatchNorm-LeakyReLU blocks that halve the size, then one Conv2d to a
single logit (the tutorial's Sigmoid is folded into the loss: BCEWithLogits is the same
math, numerically stable). No conv biases; conv weights ~ N(0, 0.02), BatchNorm weights
~ N(1, 0.02) and biases 0 (the tutorial's ``weights_init``).

The tutorial's 64x64 layout starts from a 4x4 map and doubles four times. Here the number
of doublings ``k`` is the largest that leaves an integer start map of at least 4 px, and at
least two (a 2 px start) where the image is too small for that: 8x8 digits -> 2x2 start,
k=2 (with one doubling D could not tell digits from blobs: D(real) ~ D(fake) ~ 0.5 for
15 epochs); 28x28 (MNIST) -> 7x7, k=2; 32x32 (CIFAR) -> 4x4, k=3; 64x64 -> 4x4, k=4.
Channel widths follow the tutorial: ngf * 2**(k-1) after the first block, halved per block.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from reprolab.core.errors import ModelBuildError
from reprolab.models._base import StrictOptions

TASK = "generative"  # not a classifier: build() gives a DCGAN, forward(noise) -> images
INPUTS = ("image",)


class Options(StrictOptions):
    latent: int = Field(default=32, ge=1)  # noise size (the tutorial's nz = 100 for 64 px)
    ngf: int = Field(default=32, ge=1)  # generator width (tutorial 64)
    ndf: int = Field(default=32, ge=1)  # discriminator width (tutorial 64)
    beta1: float = Field(default=0.5, ge=0.0, lt=1.0)  # Adam beta1 of both optimisers


class DCGAN(nn.Module):
    """Both networks of the GAN; ``forward(noise)`` is the generator (images in [-1, 1])."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, latent: int) -> None:
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator
        self.latent = latent

    def forward(self, noise):
        return self.generator(noise)


def _fit(height: int, width: int, min_start: int) -> int:
    k = 0
    while all(s % 2 ** (k + 1) == 0 and s // 2 ** (k + 1) >= min_start for s in (height, width)):
        k += 1
    return k


def doublings(height: int, width: int) -> int:
    """How many stride-2 (de)convolutions each network has (see the module docstring);
    0 when not even one fits."""
    k = _fit(height, width, 4)
    return k if k >= 2 else _fit(height, width, 2)


def _up(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(True),
    ]


def _down(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    ]


def init_weights(module: nn.Module) -> None:
    """The tutorial's ``weights_init``: conv N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def generator(options: Options, input_shape: tuple[int, ...]) -> nn.Sequential:
    channels, height, width = input_shape
    k = doublings(height, width)
    start = (height >> k, width >> k)
    c = options.ngf * 2 ** (k - 1)
    layers = [
        nn.ConvTranspose2d(options.latent, c, start, 1, 0, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(True),
    ]
    for _ in range(k - 1):
        layers += _up(c, c // 2)
        c //= 2
    layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


def discriminator(options: Options, input_shape: tuple[int, ...]) -> nn.Sequential:
    channels, height, width = input_shape
    k = doublings(height, width)
    c = options.ndf
    layers: list[nn.Module] = [
        nn.Conv2d(channels, c, 4, 2, 1, bias=False),
        nn.LeakyReLU(0.2, inplace=True),
    ]
    for _ in range(k - 1):
        layers += _down(c, 2 * c)
        c *= 2
    layers += [nn.Conv2d(c, 1, (height >> k, width >> k), 1, 0, bias=False), nn.Flatten()]
    return nn.Sequential(*layers)


def build(options: Options, input_shape: tuple[int, ...], n_outputs: int) -> DCGAN:
    """``n_outputs`` (the classes) is unused: the GAN is unconditional."""
    if len(input_shape) != 3 or doublings(*input_shape[1:]) < 1:
        raise ModelBuildError(
            "dcgan needs images (C, H, W) with even sides of at least 4 px, "
            f"got input shape {tuple(input_shape)}"
        )
    model = DCGAN(
        generator(options, input_shape), discriminator(options, input_shape), options.latent
    )
    model.apply(init_weights)
    return model
