"""The training loop: early stopping with best-checkpoint restore, schedules, divergence."""

from __future__ import annotations

import pytest
import torch

from reprolab.config import ModelSpec, TrainParams
from reprolab.data.tensors import TensorData
from reprolab.engine import (
    DeviceError,
    DivergedError,
    evaluate_loss,
    fit,
    make_optimizer,
    select_device,
)
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
    restored_loss, _ = evaluate_loss(model, blobs(96, 2))
    assert restored_loss == pytest.approx(result.best_val_loss, rel=1e-6)


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_runs_on_cuda() -> None:
    model = small_mlp().cuda()
    opt = make_optimizer(model, ModelSpec(arch="mlp"), lr=0.01, weight_decay=0.0)
    data = blobs(64, 1)
    data = TensorData(x=data.x.cuda(), y=data.y.cuda())
    result = fit(
        model,
        data,
        data,
        optimizer=opt,
        train_params=TrainParams(max_epochs=2),
        epochs=2,
        batch_size=16,
        seed=0,
    )
    assert len(result.history) == 2
