"""The feature space of the GAN score: the pipeline's own trained classifier.

The Fréchet Inception Distance (Heusel et al. 2017) compares real and generated images
through Inception-v3's pool features. Here the network is instead a classifier this pipeline
trained on the same dataset (``models/<scorer>/``, e.g. the ``cnn``), read at its
penultimate layer: the input of its last Linear layer, the representation it separates the
classes with. Why:
- Inception needs 299x299 RGB inputs and ImageNet weights (a ~100 MB download an offline
  run cannot make); upsampled 8x8 grey digits are far from what its features describe.
- The classifier is fixed, versioned and reproducible: DVC tracks its model.pt, so the score
  changes exactly when the scorer does, and the DAG reruns the GAN's stages when it does.

Limits:
- Scores are comparable only under one scorer (the same model.pt): another arch, another
  training run or another dataset is another feature space with another scale. They are
  not comparable with published FID figures.
- A classifier's features are class-discriminative: the score rewards samples that look
  like some class to that classifier and is blind to what it learned to ignore.
- Few images in many dimensions (270 validation digits, 128 features) give a rank-deficient
  covariance and an upward-biased distance: compare scores at equal sample counts only
  (the GAN stages always generate as many images as the real split holds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from reprolab.learn.metrics import frechet_distance


class PenultimateFeatures(nn.Module):
    """A frozen classifier whose output is the input of its last ``nn.Linear`` (the head):
    the pooled features of a ResNet, the last hidden layer of an MLP, LeNet or CNN."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        heads = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
        if not heads:
            raise ValueError(f"{type(classifier).__name__} has no nn.Linear head to read")
        self.classifier = classifier.eval().requires_grad_(False)
        self.head = heads[-1]

    def train(self, mode: bool = True) -> PenultimateFeatures:
        return super().train(False)  # always eval: no dropout, BatchNorm running stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = self.head.register_forward_hook(
            lambda _m, inputs, _out: captured.append(inputs[0])
        )
        try:
            self.classifier(x)
        finally:
            handle.remove()
        return captured[0].flatten(1)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (rows are samples) in float64."""
    features = np.asarray(features, np.float64)
    return features.mean(0), np.cov(features, rowvar=False)


class FrechetScorer:
    """The Fréchet distance of generated images to one real split, in a classifier's features.

    Images go in as the classifier takes them: raw pixel values (its Standardize is inside).
    The real split's statistics are computed once, here.
    """

    def __init__(self, classifier: nn.Module, real: torch.Tensor, batch_size: int = 512) -> None:
        self.network = PenultimateFeatures(classifier)
        self.batch_size = batch_size
        self.n_real = len(real)
        self.mu, self.sigma = gaussian_stats(self.features(real).double().cpu().numpy())

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Float32 features on the images' device, in batches."""
        return torch.cat([self.network(batch.float()) for batch in images.split(self.batch_size)])

    def distance(self, features: np.ndarray) -> float:
        """Fréchet distance of the Gaussian fitted to ``features`` to the real split's."""
        return frechet_distance(*gaussian_stats(features), self.mu, self.sigma)

    def score(self, images: torch.Tensor) -> float:
        return self.distance(self.features(images).double().cpu().numpy())


def load_classifier(folder: Path, device: torch.device | str) -> nn.Module:
    """The trained classifier in ``folder`` (model.json + model.pt), on ``device``."""
    from reprolab.learn.checkpoints import load_model

    model, _ = load_model(folder, device)
    return model
