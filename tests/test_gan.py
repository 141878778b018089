"""DCGAN: shapes per dataset, the tutorial's init, the Fréchet distance, brief training, grid."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from reprolab.core.errors import ModelBuildError
from reprolab.learn.features import FrechetScorer, PenultimateFeatures, gaussian_stats
from reprolab.learn.gan import fit_gan, generate, grid_image, validation_noise, write_sample_grid
from reprolab.learn.metrics import frechet_distance
from reprolab.models import dcgan
from reprolab.models._base import ModelSpec, build_model


@pytest.fixture
def one_thread():
    """Tiny convolutions: with 2 threads on a busy 2-core machine every op waits at an
    OpenMP barrier (measured 72 s vs 3 s for the brief training under load 8)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gan(shape: tuple[int, ...], **options) -> dcgan.DCGAN:
    torch.manual_seed(0)
    return dcgan.build(dcgan.Options(**options), shape, 10)


@pytest.mark.parametrize(("shape", "start"), [((1, 8, 8), 2), ((1, 28, 28), 7), ((3, 32, 32), 4)])
def test_builds_for_each_dataset_shape(shape: tuple[int, ...], start: int) -> None:
    model = gan(shape).eval()
    noise = torch.randn(3, model.latent, 1, 1)
    layers = list(model.generator)
    assert layers[0].kernel_size == (start, start)  # the start map
    images = model(noise)
    assert images.shape == (3, *shape)
    assert isinstance(layers[-1], nn.Tanh) and images.abs().max() <= 1.0
    assert model.discriminator(images).shape == (3, 1)
    d_layers = list(model.discriminator)
    assert isinstance(d_layers[1], nn.LeakyReLU) and d_layers[1].negative_slope == 0.2
    # Mirror images: as many stride-2 convs in D as stride-2 deconvs in G.
    ups = [m for m in layers if isinstance(m, nn.ConvTranspose2d) and m.stride == (2, 2)]
    downs = [m for m in d_layers if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert len(ups) == len(downs) >= 2


def test_init_follows_the_tutorial() -> None:
    model = gan((3, 32, 32), ngf=64, ndf=64)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert all(m.bias is None for m in convs)
    assert abs(weights.mean()) < 1e-3 and abs(weights.std() - 0.02) < 5e-4, weights.std()
    gammas = torch.cat([m.weight for m in norms])
    assert abs(gammas.mean() - 1.0) < 3e-3 and abs(gammas.std() - 0.02) < 3e-3, gammas.std()
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in norms)


def test_sizes_without_a_doubling_are_refused() -> None:
    with pytest.raises(ModelBuildError, match=r"even sides .* \(1, 7, 7\)"):
        gan((1, 7, 7))


def test_frechet_distance_matches_closed_forms() -> None:
    rng = np.random.default_rng(0)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2.
    fd = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]]))
    assert fd == pytest.approx(4.0 + 1.0, rel=1e-12)
    # Commuting covariances (one eigenbasis): |dmu|^2 + sum (sqrt(a) - sqrt(b))^2.
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = rng.uniform(0.1, 5, 6), rng.uniform(0.1, 5, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    fd = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert fd == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_agrees_with_sqrtm_and_survives_singular_covariances() -> None:
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(200, 5)), rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5))
    (mu1, s1), (mu2, s2) = gaussian_stats(x), gaussian_stats(y)
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-8)
    # 20 samples in 64 dimensions: rank 19; a distribution is at distance 0 from itself.
    few = gaussian_stats(rng.normal(size=(20, 64)))
    assert frechet_distance(*few, *few) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(mu1, s1, mu2[:3], s2[:3, :3])


def classifier(shape: tuple[int, ...] = (1, 8, 8)) -> nn.Module:
    """An untrained LeNet: a fixed random feature map (its 84-wide last hidden layer)."""
    torch.manual_seed(5)
    spec = ModelSpec("lenet", {}, shape, 2, [0.5 * 16] * shape[0], [0.3 * 16] * shape[0])
    return build_model(spec)


def pixel_scorer(real: torch.Tensor) -> FrechetScorer:
    """A linear classifier's penultimate features are its input: the distance in pixel space,
    where an untrained generator's grey noise is far from bars."""
    return FrechetScorer(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), real)


def test_penultimate_features_are_the_heads_input() -> None:
    model = classifier()
    x = torch.rand(4, 1, 8, 8) * 16
    features = PenultimateFeatures(model)(x)
    with torch.no_grad():
        expected = model[1][:-1](model[0](x))  # everything before the last Linear
    assert features.shape == (4, 84) and torch.equal(features, expected)


def bars(n: int, seed: int) -> torch.Tensor:
    """8x8 images in 0..16: a bright vertical or horizontal bar at a random place."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 8, 8, dtype=torch.uint8)
    where = torch.randint(1, 7, (n,), generator=g)
    vertical = torch.rand(n, generator=g) < 0.5
    for i in range(n):
        if vertical[i]:
            images[i, 0, :, where[i]] = 16
        else:
            images[i, 0, where[i], :] = 16
    return images


def test_brief_training_lowers_fid_and_restores_the_best_epoch(one_thread) -> None:
    train, val = bars(256, 0), bars(128, 1)
    scorer = pixel_scorer(val)
    model = gan((1, 8, 8), ngf=16, ndf=16)
    noise = validation_noise(scorer.n_real, model.latent, seed=0)
    untrained = scorer.score(generate(model, noise, 16.0))
    rows = []
    result = fit_gan(
        model,
        train,
        scorer,
        lr=1e-2,
        weight_decay=0.0,
        beta1=0.5,
        epochs=4,
        batch_size=32,
        seed=0,
        pixel_max=16.0,
        on_epoch=lambda epoch, row: rows.append(row),
    )
    assert rows == result.history and len(rows) == 4
    assert set(rows[0]) == {"epoch", "loss_d", "loss_g", "d_real", "d_fake", "val_fid", "lr"}
    assert result.best_value < 0.75 * untrained, (untrained, rows)
    # The restored generator is the best epoch's: it scores that epoch's FID again.
    assert scorer.score(generate(model, noise, 16.0)) == pytest.approx(result.best_value)
    assert result.best_value == min(r["val_fid"] for r in rows)


def test_nan_data_raises_diverged(one_thread) -> None:
    from reprolab.core.errors import DivergedError

    train = bars(64, 0).float()
    train[0, 0, 0, 0] = float("nan")
    scorer = pixel_scorer(bars(32, 1))
    with pytest.raises(DivergedError, match="epoch 1"):
        fit_gan(
            gan((1, 8, 8), ngf=4, ndf=4),
            train,
            scorer,
            lr=1e-3,
            weight_decay=0.0,
            beta1=0.5,
            epochs=2,
            batch_size=64,
            seed=0,
            pixel_max=16.0,
        )


def test_grid_layout() -> None:
    images = np.zeros((3, 1, 2, 2))
    images[1] = 16.0  # the second image white
    grid = grid_image(images, pixel_max=16.0, columns=2, cell=4)
    # 2x2 images scaled x2 to 4x4, 2 px gaps: 2 rows x 2 columns of cells.
    assert grid.shape == (2 + 2 * (4 + 2), 2 + 2 * (4 + 2)) and grid.dtype == np.uint8
    assert (grid[2:6, 8:12] == 255).all() and grid.sum() == 255 * 16
    rgb = grid_image(np.zeros((1, 3, 4, 4)), 255.0, columns=1, cell=4)
    assert rgb.shape == (8, 8, 3)


def test_sample_grid_png_is_byte_deterministic(tmp_path) -> None:
    from PIL import Image

    model = gan((1, 8, 8))
    write_sample_grid(model, tmp_path / "a.png", pixel_max=16.0, seed=3, n=16, columns=4)
    write_sample_grid(model, tmp_path / "b.png", pixel_max=16.0, seed=3, n=16, columns=4)
    data = (tmp_path / "a.png").read_bytes()
    assert data == (tmp_path / "b.png").read_bytes()
    image = Image.open(io.BytesIO(data))
    assert image.mode == "L" and image.size == (2 + 4 * (32 + 2),) * 2
    write_sample_grid(model, tmp_path / "c.png", pixel_max=16.0, seed=4, n=16, columns=4)
    assert (tmp_path / "c.png").read_bytes() != data  # another noise, other samples


def test_generators_in_params_are_checked() -> None:
    import yaml
    from conftest import REPO

    from reprolab.core.errors import ParamsError
    from reprolab.core.params import validate_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert validate_params(raw).generators["dcgan"].scorer.model == "cnn"
    cases = [
        ({"scorer": {"model": "nope", "arch": "cnn"}}, "'nope' is not a key of classifiers"),
        ({"scorer": {"model": "cnn", "arch": "lenet"}}, "differs from classifiers.cnn.arch"),
        ({"arch": "cnn"}, "generators.dcgan.arch: 'cnn' is a supervised architecture"),
        ({"options": {"beta1": 1.0}}, "generators.dcgan.options.beta1"),
        ({"optimizer": "sgd"}, "two Adam optimisers"),
    ]
    for change, message in cases:
        bad = {**raw, "generators": {"dcgan": {**raw["generators"]["dcgan"], **change}}}
        with pytest.raises(ParamsError, match=message):
            validate_params(bad)
    as_model = {**raw, "classifiers": {**raw["classifiers"], "g": {"arch": "dcgan"}}}
    with pytest.raises(ParamsError, match="classifiers.g.arch: 'dcgan' is a generative"):
        validate_params(as_model)


def test_restore_last_keeps_the_last_epochs_generator(one_thread) -> None:
    """``train.restore: last`` in the GAN loop: the generator kept is the last epoch's."""
    train, val = bars(128, 0), bars(64, 1)
    scorer = pixel_scorer(val)
    model = gan((1, 8, 8), ngf=8, ndf=8)
    noise = validation_noise(scorer.n_real, model.latent, seed=0)
    common = dict(lr=1e-2, weight_decay=0.0, beta1=0.5, batch_size=32, seed=0, pixel_max=16.0)
    result = fit_gan(model, train, scorer, epochs=3, restore="last", **common)
    kept = result.kept
    assert result.best_epoch < len(result.history)  # else this could not tell them apart
    assert kept == result.history[-1]
    assert scorer.score(generate(model, noise, 16.0)) == pytest.approx(kept["val_fid"])
