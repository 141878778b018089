"""The training loop: early stopping, checkpoint restore, schedules, augmentation, backends."""

from __future__ import annotations

import math

import pytest
import torch

from reprolab.core.errors import DeviceError, DivergedError
from reprolab.core.schema import ModelSpec, TrainParams
from reprolab.learn import engine
from reprolab.learn.device import select_device
from reprolab.learn.engine import augment_images, evaluate_loss, fit, make_optimizer
from reprolab.learn.tensors import TensorData
from reprolab.models._base import ModelSpec as ArchSpec
from reprolab.models._base import build_model


def blobs(n: int, seed: int) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) * 3 + y.view(-1, 1, 1, 1).float()
    return TensorData(x=x, y=y)


def small_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    spec = ArchSpec("mlp", {"hidden": [64]}, (1, 8, 8), 3, [0.0], [1.0])
    return build_model(spec)


def train(model, lr: float, optimizer: str = "adam", **train_kwargs) -> tuple:
    params = TrainParams(**train_kwargs)
    opt = make_optimizer(model, ModelSpec(arch="mlp", optimizer=optimizer), lr=lr, weight_decay=0.0)
    result = fit(
        model,
        blobs(96, 1),
        blobs(96, 2),
        optimizer=opt,
        train_params=params,
        epochs=params.max_epochs,
        batch_size=16,
        seed=0,
    )
    return result, params


def test_early_stopping_restores_the_best_epoch() -> None:
    model = small_mlp()
    result, params = train(model, lr=0.05, max_epochs=40, patience=3)
    losses = [row["val_loss"] for row in result.history]
    assert result.best_epoch == 1 + losses.index(min(losses))
    assert len(result.history) < 40, "noisy blobs with a high lr should stop early"
    assert len(result.history) == result.best_epoch + params.patience
    assert result.kept_epoch == result.best_epoch
    restored_loss, _ = evaluate_loss(model, blobs(96, 2))
    assert restored_loss == pytest.approx(result.best_value, rel=1e-6)


def test_restore_last_keeps_the_last_epochs_weights() -> None:
    """``train.restore: last`` (for OneCycle, annealed to its last epoch): the best epoch is
    still found and reported, but the weights kept are the last epoch's."""
    model = small_mlp()
    result, _ = train(model, lr=0.05, max_epochs=40, patience=3, restore="last")
    losses = [row["val_loss"] for row in result.history]
    assert result.best_epoch == 1 + losses.index(min(losses)) < len(result.history)
    kept_loss, _ = evaluate_loss(model, blobs(96, 2))
    assert kept_loss == pytest.approx(losses[-1], rel=1e-6)
    assert kept_loss > result.best_value
    assert result.kept == result.history[-1]
    assert result.kept_epoch == len(result.history)
    assert result.history[result.best_epoch - 1]["val_loss"] == result.best_value


def test_same_seed_same_history() -> None:
    a, _ = train(small_mlp(), lr=0.01, max_epochs=4, patience=4)
    b, _ = train(small_mlp(), lr=0.01, max_epochs=4, patience=4)
    assert a.history == b.history


def test_step_decay_halves_lr() -> None:
    result, _ = train(
        small_mlp(),
        lr=0.01,
        max_epochs=4,
        patience=10,
        scheduler="step",
        step={"every": 2, "gamma": 0.5},
    )
    assert [round(r["lr"], 6) for r in result.history] == [0.01, 0.005, 0.005, 0.0025]


@pytest.mark.parametrize("kind", ["cyclic", "onecycle"])
def test_per_batch_schedules_move_the_lr(kind: str) -> None:
    result, _ = train(small_mlp(), lr=0.01, max_epochs=3, patience=10, scheduler=kind)
    lrs = [r["lr"] for r in result.history]
    assert len(set(lrs)) >= 2 and max(lrs) <= 0.01 + 1e-12


def test_divergence_is_reported() -> None:
    with pytest.raises(DivergedError, match="diverged at epoch"):
        train(small_mlp(), lr=1e30, optimizer="sgd", max_epochs=5, patience=5)


def test_explicit_cuda_without_gpu_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        select_device("cuda")
    assert select_device("auto").type in ("cpu", "mps")


def distinct_images(n: int, channels: int = 2, size: int = 6) -> torch.Tensor:
    """uint8 images with no zero pixel, so zeros in an output can only be padding."""
    pixels = torch.arange(n * channels * size * size) % 250 + 1
    return pixels.reshape(n, channels, size, size).to(torch.uint8)


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` moved by (dy, dx) pixels, zeros where it moved away from."""
    _, h, w = image.shape
    out = torch.zeros_like(image)
    out[:, max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = image[
        :, max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)
    ]
    return out


def test_random_crop_shifts_each_image_within_the_padding() -> None:
    x = distinct_images(32)
    out = augment_images(x, crop_padding=2, flip=False, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    shifts = []
    for before, after in zip(x, out, strict=True):
        found = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(after, shifted(before, dy, dx))
        ]
        assert len(found) == 1, "each output is its input shifted by at most the padding"
        shifts += found
    assert len(set(shifts)) > 5, "offsets are drawn per image"


def test_flip_mirrors_some_images_and_keeps_the_others() -> None:
    x = distinct_images(64)
    out = augment_images(x, crop_padding=0, flip=True, generator=torch.Generator().manual_seed(0))
    flipped = [torch.equal(a, b.flip(-1)) for a, b in zip(out, x, strict=True)]
    kept = [torch.equal(a, b) for a, b in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54


def test_augmentation_is_seeded_and_needs_images() -> None:
    x = distinct_images(8)
    a = augment_images(x, 1, True, torch.Generator().manual_seed(3))
    b = augment_images(x, 1, True, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="crop_padding: 0"):
        augment_images(torch.zeros(4, 10), 1, False)


def test_augmentation_is_off_by_default_and_validated() -> None:
    assert not TrainParams().augment.enabled
    assert TrainParams(augment={"flip": True}).augment.enabled
    with pytest.raises(ValueError):
        TrainParams(augment={"crop_padding": -1})
    with pytest.raises(ValueError):
        TrainParams(augment={"flipp": True})


def test_augmentation_touches_training_batches_only(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def record(x, crop_padding, flip, generator=None):
        calls.append(len(x))
        return augment_images(x, crop_padding, flip, generator)

    monkeypatch.setattr(engine, "augment_images", record)
    result, _ = train(small_mlp(), lr=0.01, max_epochs=2, patience=5, augment={"crop_padding": 1})
    # 96 training rows in batches of 16, two epochs; never the 96 validation rows at once.
    assert calls == [16] * 12 and len(result.history) == 2


def test_deterministic_param_switches_torch_algorithms() -> None:
    try:
        train(small_mlp(), lr=0.01, max_epochs=1, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()
        train(small_mlp(), lr=0.01, max_epochs=1, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_optimizers_are_fused_on_cpu() -> None:
    model = small_mlp()
    for name in ("adam", "sgd"):
        opt = make_optimizer(model, ModelSpec(arch="mlp", optimizer=name), lr=0.1, weight_decay=0)
        assert opt.defaults["fused"] is True


def test_fit_logs_one_row_per_epoch_and_progress_can_be_forced(capsys) -> None:
    rows = []
    model = small_mlp()
    opt = make_optimizer(model, ModelSpec(arch="mlp"), lr=0.01, weight_decay=0.0)
    fit(
        model,
        blobs(64, 1),
        blobs(32, 2),
        optimizer=opt,
        train_params=TrainParams(max_epochs=3, patience=3),
        epochs=3,
        batch_size=16,
        seed=0,
        on_epoch=lambda epoch, row: rows.append(epoch),
        progress=True,
    )
    assert rows == [1, 2, 3]
    assert "epochs" in capsys.readouterr().err


def test_off_a_terminal_each_epoch_prints_a_short_line(capsys, monkeypatch) -> None:
    """Under `dvc repro > log` or CI (stderr not a TTY) no bar is drawn: a line per epoch
    (at most one every EPOCH_LINE_S seconds; here every one) and a closing line say the
    stage is moving. On a terminal the tqdm bar stays; progress=False prints nothing."""
    from reprolab.learn import loop

    monkeypatch.setattr(loop, "EPOCH_LINE_S", 0.0)
    model = small_mlp()
    opt = make_optimizer(model, ModelSpec(arch="mlp"), lr=0.01, weight_decay=0.0)
    run = dict(optimizer=opt, train_params=TrainParams(max_epochs=3, patience=3), epochs=3)
    fit(model, blobs(64, 1), blobs(32, 2), batch_size=16, seed=0, desc="train mlp", **run)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" val_loss")[0] for line in lines[:3]] == [
        f"train mlp: epoch {e}/3" for e in (1, 2, 3)
    ]
    assert lines[3].startswith("train mlp: 3 epochs, best ") and len(lines) == 4
    fit(model, blobs(64, 1), blobs(32, 2), batch_size=16, seed=0, progress=False, **run)
    assert capsys.readouterr().err == ""


def test_conv_nets_train_channels_last_on_cpu_and_come_back_contiguous() -> None:
    torch.manual_seed(0)
    model = build_model(ArchSpec("lenet", {}, (1, 8, 8), 3, [0.0], [1.0]))
    opt = make_optimizer(model, ModelSpec(arch="lenet"), lr=0.01, weight_decay=0.0)
    conv = model[1][0][3]  # 6 -> 16 channels (a 1-channel weight is both layouts)
    layouts = []
    result = fit(
        model,
        blobs(64, 1),
        blobs(64, 2),
        optimizer=opt,
        train_params=TrainParams(max_epochs=2),
        epochs=2,
        batch_size=16,
        seed=0,
        on_epoch=lambda epoch, row: layouts.append(
            conv.weight.is_contiguous(memory_format=torch.channels_last)
            and not conv.weight.is_contiguous()
        ),
    )
    assert layouts == [True, True]
    assert all(p.is_contiguous() for p in model.parameters())
    # Evaluation outside fit (contiguous) agrees with the best epoch's (channels_last) loss.
    loss, _ = evaluate_loss(model, blobs(64, 2))
    assert loss == pytest.approx(result.best_value, rel=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_runs_on_cuda_with_bf16_channels_last_and_augmentation() -> None:
    torch.manual_seed(0)
    model = build_model(ArchSpec("lenet", {}, (1, 8, 8), 3, [0.0], [1.0])).cuda()
    opt = make_optimizer(model, ModelSpec(arch="lenet"), lr=0.01, weight_decay=0.0)
    assert opt.defaults["fused"] is True
    train_data, val_data = blobs(64, 1), blobs(64, 2)
    to_cuda = [TensorData(x=d.x.cuda(), y=d.y.cuda()) for d in (train_data, val_data)]
    params = TrainParams(
        max_epochs=2, deterministic=False, augment={"crop_padding": 1, "flip": True}
    )
    try:
        result = fit(
            model,
            *to_cuda,
            optimizer=opt,
            train_params=params,
            epochs=2,
            batch_size=16,
            seed=0,
        )
        assert torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(False)
    assert len(result.history) == 2
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    # channels_last during training only: the restored model is contiguous again.
    assert all(p.is_contiguous() for p in model.parameters())
    # Evaluation outside fit runs in float32 and agrees with the best epoch's loss (bf16).
    loss, _ = evaluate_loss(model, to_cuda[1])
    assert loss == pytest.approx(result.best_value, rel=0.05)
