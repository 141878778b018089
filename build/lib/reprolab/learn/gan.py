"""DCGAN training: the tutorial's alternating updates, a validation Fréchet distance per
epoch, the best generator kept; and the fixed-noise sample grid.

Like engine.fit, and through the same epoch driver (learn.loop): images sit on the device as
uint8 and are cast per batch, batches are taken
by index in an order drawn from a seeded CPU generator, the epoch's losses accumulate on the
device and are read with the validation features in one host sync.

Pixel ranges: the splits hold raw pixel values in [0, pixel_max] (16 for digits, 255 for
8-bit images); the GAN works in [-1, 1] (Tanh output); ``Pixels`` maps generated images back
to raw values, the units the scoring classifier and a user of the saved generator expect.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from reprolab.core.io import atomic_path
from reprolab.learn.device import configure_backends
from reprolab.learn.features import FrechetScorer
from reprolab.learn.loop import EpochCallback, FitResult, run_epochs
from reprolab.models.dcgan import DCGAN


class Pixels(nn.Module):
    """[-1, 1] -> [0, pixel_max]: the generator's Tanh range back to raw pixel values."""

    def __init__(self, pixel_max: float) -> None:
        super().__init__()
        self.pixel_max = float(pixel_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 1.0) * (self.pixel_max / 2.0)


def to_unit_range(x: torch.Tensor, pixel_max: float) -> torch.Tensor:
    """Raw pixels (any dtype) -> float in [-1, 1], the range of the generator's Tanh."""
    return x.float() * (2.0 / pixel_max) - 1.0


def sampler(model: DCGAN, pixel_max: float) -> nn.Sequential:
    """noise (N, latent, 1, 1) -> images in raw pixel values: what is saved and served."""
    return nn.Sequential(model.generator, Pixels(pixel_max))


def fixed_noise(n: int, latent: int, seed: int) -> torch.Tensor:
    """The same noise on every device and run: drawn on the CPU from its own seed."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(n, latent, 1, 1, generator=generator)


def validation_noise(n: int, latent: int, seed: int) -> torch.Tensor:
    """The noise fit_gan scores every epoch with (its own stream, apart from the sample grid's)."""
    return fixed_noise(n, latent, seed + 2)


@torch.no_grad()
def generate(
    model: DCGAN, noise: torch.Tensor, pixel_max: float, batch_size: int = 512
) -> torch.Tensor:
    """Images in raw pixel values from ``noise``, generator in eval mode (BatchNorm running
    statistics), on the model's device."""
    device = next(model.parameters()).device
    was_training = model.generator.training
    model.generator.eval()
    to_pixels = Pixels(pixel_max)
    images = torch.cat([to_pixels(model.generator(z.to(device))) for z in noise.split(batch_size)])
    model.generator.train(was_training)
    return images


def make_optimizers(
    model: DCGAN, lr: float, weight_decay: float, beta1: float
) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """The tutorial's two Adam optimisers, betas (beta1, 0.999), the tuned lr and decay."""
    fused = {"fused": True} if next(model.parameters()).device.type in ("cpu", "cuda") else {}

    def adam(net: nn.Module) -> torch.optim.Adam:
        return torch.optim.Adam(
            net.parameters(), lr=lr, betas=(beta1, 0.999), weight_decay=weight_decay, **fused
        )

    return adam(model.generator), adam(model.discriminator)


def fit_gan(
    model: DCGAN,
    train_x: torch.Tensor,
    scorer: FrechetScorer,
    *,
    lr: float,
    weight_decay: float,
    beta1: float,
    epochs: int,
    batch_size: int,
    seed: int,
    pixel_max: float,
    deterministic: bool = True,
    patience: int | None = None,
    restore: str = "best",
    on_epoch: EpochCallback | None = None,
    desc: str = "epochs",
    progress: bool | None = None,
) -> FitResult:
    """Train D and G in turn (the tutorial's loop, non-saturating G loss); after each epoch,
    score ``scorer.n_real`` images from a fixed noise (the same every epoch, so epochs differ
    by the generator alone). The best epoch by that score is restored (``restore="last"``: the
    last epoch is kept); with ``patience`` the loop stops after that many epochs without a
    better one.

    ``on_epoch(epoch, row)`` sees loss_d, loss_g, d_real, d_fake (mean D probabilities),
    val_fid and lr; it may raise (e.g. optuna.TrialPruned) to stop the loop.
    """
    device = train_x.device
    configure_backends(device, deterministic)
    g_optimizer, d_optimizer = make_optimizers(model, lr, weight_decay, beta1)
    order_generator = torch.Generator(device="cpu").manual_seed(seed)
    noise_generator = torch.Generator(device=device).manual_seed(seed + 1)
    val_noise = validation_noise(scorer.n_real, model.latent, seed).to(device)
    bce = nn.functional.binary_cross_entropy_with_logits

    def run_epoch(epoch: int) -> dict[str, float]:
        model.train()
        order = torch.randperm(len(train_x), generator=order_generator).to(device)
        sums = torch.zeros(4, device=device)
        for index in order.split(batch_size):
            real = to_unit_range(train_x[index], pixel_max)
            n = len(index)
            ones = torch.ones(n, 1, device=device)
            zeros = torch.zeros(n, 1, device=device)
            noise = torch.randn(n, model.latent, 1, 1, device=device, generator=noise_generator)
            fake = model.generator(noise)
            # Discriminator: real -> 1, fake -> 0, on separate batches (BatchNorm statistics
            # of all-real and all-fake batches, as in the tutorial).
            d_real = model.discriminator(real)
            d_fake = model.discriminator(fake.detach())
            loss_d = bce(d_real, ones) + bce(d_fake, zeros)
            d_optimizer.zero_grad(set_to_none=True)
            loss_d.backward()
            d_optimizer.step()
            # Generator: make the updated D call the fakes real (non-saturating loss).
            model.discriminator.requires_grad_(False)  # no weight gradients for D here
            loss_g = bce(model.discriminator(fake), ones)
            g_optimizer.zero_grad(set_to_none=True)
            loss_g.backward()
            g_optimizer.step()
            model.discriminator.requires_grad_(True)
            step = torch.stack(
                [
                    loss_d.detach(),
                    loss_g.detach(),
                    torch.sigmoid(d_real.detach()).mean(),
                    torch.sigmoid(d_fake.detach()).mean(),
                ]
            )
            sums.add_(step, alpha=n)
        features = scorer.features(generate(model, val_noise, pixel_max))
        # The epoch's only host sync: the four means and the generated images' features.
        host = torch.cat([sums / len(train_x), features.flatten()]).double().cpu().numpy()
        loss_d_mean, loss_g_mean, d_real_mean, d_fake_mean = host[:4].tolist()
        finite = math.isfinite(loss_d_mean) and math.isfinite(loss_g_mean)
        # No distance from NaN features: the driver reports the divergence.
        val_fid = scorer.distance(host[4:].reshape(len(val_noise), -1)) if finite else math.nan
        return {
            "loss_d": loss_d_mean,
            "loss_g": loss_g_mean,
            "d_real": d_real_mean,
            "d_fake": d_fake_mean,
            "val_fid": val_fid,
            "lr": lr,
        }

    return run_epochs(
        model,
        epochs,
        run_epoch,
        monitor="val_fid",
        patience=patience,
        on_epoch=on_epoch,
        desc=desc,
        progress=progress,
        shown=("loss_d",),
        restore=restore,
    )


def grid_image(
    images: np.ndarray, pixel_max: float, columns: int = 8, cell: int = 32
) -> np.ndarray:
    """(N, C, H, W) raw pixel values -> one uint8 (rows, cols[, 3]) grid, each image scaled
    up by an integer factor (nearest) to at least ``cell`` px, 2 px black gaps."""
    n, channels, height, width = images.shape
    scale = max(1, math.ceil(cell / max(height, width)))
    values = np.clip(np.rint(np.asarray(images, np.float64) / pixel_max * 255.0), 0, 255)
    values = values.astype(np.uint8).repeat(scale, 2).repeat(scale, 3)
    rows, gap = math.ceil(n / columns), 2
    h, w = height * scale, width * scale
    grid = np.zeros((channels, rows * (h + gap) + gap, columns * (w + gap) + gap), np.uint8)
    for i, image in enumerate(values):
        top, left = gap + (i // columns) * (h + gap), gap + (i % columns) * (w + gap)
        grid[:, top : top + h, left : left + w] = image
    return grid[0] if channels == 1 else grid.transpose(1, 2, 0)


def png_bytes(grid: np.ndarray) -> bytes:
    """PNG of a uint8 grid; PIL writes no time or version chunk, so equal pixels give equal
    bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    return buffer.getvalue()


def write_sample_grid(
    model: DCGAN, path: Path, pixel_max: float, seed: int, n: int = 64, columns: int = 8
) -> None:
    """A PNG grid of ``n`` samples from the fixed noise of ``seed``, written atomically."""
    images = generate(model, fixed_noise(n, model.latent, seed), pixel_max).cpu().numpy()
    data = png_bytes(grid_image(images, pixel_max, columns))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
