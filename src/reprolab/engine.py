"""The training and evaluation loop: device, seeding, optimisers, schedules, early stopping.

Data sits on the device as tensors and batches are taken by index (no DataLoader, no
per-sample Python). Losses accumulate on the device and are read once per epoch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from reprolab import registry
from reprolab.config import ModelSpec, TrainParams
from reprolab.data.tensors import TensorData

EpochCallback = Callable[[int, dict[str, float]], None]


class DeviceError(RuntimeError):
    """The requested device is not available on this machine."""


class DivergedError(RuntimeError):
    """The loss became NaN or infinite."""


def select_device(name: str) -> torch.device:
    """``auto`` picks cuda, else mps, else cpu; an explicit device must exist."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            "device: 'cuda' requested but no CUDA GPU is visible; use 'auto' or 'cpu'"
        )
    if name == "mps" and not has_mps:
        raise DeviceError("device: 'mps' requested but MPS is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int, threads: int) -> None:
    """One seed for python, numpy and torch; a fixed thread count (it changes float sums)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def make_optimizer(
    model: nn.Module, spec: ModelSpec, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """SGD (momentum) or Adam over the trainable params; an arch module may define
    ``param_groups(core, options)`` to give groups their own lr scale (e.g. backbone x 0.1)."""
    module = registry.model_module(spec.arch)
    core = model[-1] if isinstance(model, nn.Sequential) else model
    if hasattr(module, "param_groups"):
        options = module.Options.model_validate(spec.options)
        groups = [
            {"params": params, "lr": lr * scale}
            for params, scale in module.param_groups(core, options)
            if params
        ]
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=spec.momentum, weight_decay=weight_decay)
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)


class _Schedule:
    """Wraps torch's schedulers so the loop calls ``after_batch``/``after_epoch`` alone."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        train: TrainParams,
        steps_per_epoch: int,
        epochs: int,
    ) -> None:
        self.kind = train.scheduler
        lrs = [g["lr"] for g in optimizer.param_groups]
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        if self.kind == "step":
            self.scheduler = torch.optim.lr_scheduler.StepLR(
                optimizer, step_size=train.step.every, gamma=train.step.gamma
            )
        elif self.kind == "cyclic":
            self.scheduler = torch.optim.lr_scheduler.CyclicLR(
                optimizer,
                base_lr=[lr / 10 for lr in lrs],
                max_lr=lrs,
                step_size_up=max(1, 2 * steps_per_epoch),
                cycle_momentum=isinstance(optimizer, torch.optim.SGD),
            )
        elif self.kind == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=lrs, total_steps=steps_per_epoch * epochs
            )

    def after_batch(self) -> None:
        if self.kind in ("cyclic", "onecycle"):
            self.scheduler.step()

    def after_epoch(self) -> None:
        if self.kind == "step":
            self.scheduler.step()


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def predict(model: nn.Module, data: TensorData, batch_size: int = 1024) -> torch.Tensor:
    """Model outputs for every row of ``data``, in order, in eval mode."""
    model.eval()
    outputs = []
    for start in range(0, len(data), batch_size):
        index = torch.arange(start, min(start + batch_size, len(data)), device=data.y.device)
        x, _ = data.batch(index)
        outputs.append(model(x))
    return torch.cat(outputs)


def evaluate_loss(model: nn.Module, data: TensorData) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over ``data``, synchronised once."""
    logits = predict(model, data)
    loss = nn.functional.cross_entropy(logits, data.y)
    accuracy = (logits.argmax(1) == data.y).float().mean()
    return float(loss), float(accuracy)


def fit(
    model: nn.Module,
    train: TensorData,
    val: TensorData,
    *,
    optimizer: torch.optim.Optimizer,
    train_params: TrainParams,
    epochs: int,
    batch_size: int,
    seed: int,
    on_epoch: EpochCallback | None = None,
    desc: str = "epochs",
) -> FitResult:
    """Train with early stopping on validation loss; the best epoch's weights are restored."""
    device = train.y.device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    steps = math.ceil(len(train) / batch_size)
    schedule = _Schedule(optimizer, train_params, steps, epochs)
    result = FitResult()
    best_state = _state_copy(model)
    since_best = 0
    bar = tqdm(range(1, epochs + 1), desc=desc, leave=False, disable=None)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(train), generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        for start in range(0, len(train), batch_size):
            x, y = train.batch(order[start : start + batch_size])
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.after_batch()
            loss_sum += loss.detach() * len(y)
        schedule.after_epoch()
        train_loss = float(loss_sum) / len(train)
        val_loss, val_accuracy = evaluate_loss(model, val)
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise DivergedError(
                f"loss diverged at epoch {epoch} (train {train_loss}, val {val_loss})"
            )
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "lr": optimizer.param_groups[0]["lr"],
        }
        result.history.append(row)
        bar.set_postfix(val_loss=f"{val_loss:.4f}", val_acc=f"{val_accuracy:.3f}")
        if val_loss < result.best_val_loss:
            result.best_val_loss, result.best_epoch = val_loss, epoch
            best_state = _state_copy(model)
            since_best = 0
        else:
            since_best += 1
        if on_epoch is not None:
            on_epoch(epoch, row)
        if since_best >= train_params.patience:
            break
    model.load_state_dict(best_state)
    return result
