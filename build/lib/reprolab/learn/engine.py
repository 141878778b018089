"""The training and evaluation loop: device, seeding, optimisers, schedules, early stopping.

Data sits on the device as tensors and batches are taken by index (no DataLoader, no
per-sample Python); augmentation is batched tensor ops on the device. Losses accumulate on
the device and are read once per epoch, with the validation metrics, in one sync.

Per device (bench/throughput.py measures the CPU side): channels_last for conv models on CUDA
and CPU; on CUDA bf16 autocast and cudnn.benchmark unless ``deterministic``; on CPU plain
float32 (compile is opt-in: it measured slower for LeNet there).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from reprolab.core import registry
from reprolab.core.schema import ModelSpec, TrainParams
from reprolab.learn import distributed
from reprolab.learn.device import configure_backends
from reprolab.learn.loop import EpochCallback, FitResult, run_epochs
from reprolab.learn.objectives import OBJECTIVES
from reprolab.learn.tensors import TensorData


def make_optimizer(
    model: nn.Module, spec: ModelSpec, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """SGD (momentum) or Adam over the trainable params; an arch module may define
    ``param_groups(core, options)`` to give groups their own lr scale (e.g. backbone x 0.1)."""
    module = registry.model_module(spec.arch)
    # build_model's Sequential: Standardize, the arch's core, and (regression) an output scale.
    core = model[1] if isinstance(model, nn.Sequential) else model
    if hasattr(module, "param_groups"):
        options = module.Options.model_validate(spec.options)
        groups = [
            {"params": params, "lr": lr * scale}
            for params, scale in module.param_groups(core, options)
            if params
        ]
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
    first = groups[0]["params"][0] if groups and groups[0]["params"] else None
    # One fused kernel for all parameters instead of ~10 ops per tensor: on CPU the per-step
    # optimiser overhead is a large share of a small model's step (bench/throughput.py).
    fused = {"fused": True} if first is not None and first.device.type in ("cpu", "cuda") else {}
    if spec.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=spec.momentum, weight_decay=weight_decay, **fused
        )
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, **fused)


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


def augment_images(
    x: torch.Tensor, crop_padding: int, flip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A batch (N, C, H, W) randomly shifted (zero padding then crop) and/or mirrored.

    Every image gets its own offset and coin, drawn in a few tensor ops on x's device;
    the dtype stays (uint8 in, uint8 out), so it runs before the cast to float.
    """
    if x.dim() != 4:
        raise ValueError(
            f"augmentation needs image batches (N, C, H, W), got shape {tuple(x.shape)}; "
            "set train.augment.crop_padding: 0 and flip: false for this dataset"
        )
    n, _, height, width = x.shape
    device = x.device
    if crop_padding > 0:
        p = crop_padding
        padded = nn.functional.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n, 1, 1), device=device, generator=generator)
        dx = torch.randint(0, 2 * p + 1, (n, 1, 1), device=device, generator=generator)
        rows = dy + torch.arange(height, device=device).view(1, height, 1)
        cols = dx + torch.arange(width, device=device).view(1, 1, width)
        # Advanced indices on dims 0, 2, 3 around a slice put the channels last: (N, H, W, C).
        x = padded[torch.arange(n, device=device).view(n, 1, 1), :, rows, cols]
        x = x.permute(0, 3, 1, 2)
    if flip:
        mirror = torch.rand(n, device=device, generator=generator) < 0.5
        x = torch.where(mirror.view(n, 1, 1, 1), x.flip(3), x)
    return x


def _autocast(device: torch.device) -> AbstractContextManager:
    # bf16 on CUDA: tensor-core matmuls/convs, float32 range, no loss scaling needed.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _memory_format(model: nn.Module, sample: torch.Tensor) -> torch.memory_format:
    """channels_last for conv models on CUDA (faster cuDNN kernels, bf16 above all) and on CPU,
    where oneDNN's convolutions and max pooling run faster on it: per training step 1.08x
    (LeNet 3x32x32) to 1.25x (cnn), per evaluation pass 1.1x to 1.45x (1 thread, CPU time)."""
    convolves = any(isinstance(m, nn.Conv2d) for m in model.modules())
    if sample.device.type in ("cuda", "cpu") and sample.dim() == 4 and convolves:
        return torch.channels_last
    return torch.contiguous_format


@torch.no_grad()
def predict(
    model: nn.Module,
    data: TensorData,
    batch_size: int = 1024,
    *,
    memory_format: torch.memory_format = torch.contiguous_format,
    autocast: bool = False,
) -> torch.Tensor:
    """Model outputs (float32) for every row of ``data``, in order, in eval mode."""
    model.eval()
    device = data.y.device
    outputs = []
    for start in range(0, len(data), batch_size):
        index = torch.arange(start, min(start + batch_size, len(data)), device=device)
        x, _ = data.batch(index)
        if x.dim() == 4:
            x = x.contiguous(memory_format=memory_format)
        with _autocast(device) if autocast else nullcontext():
            outputs.append(model(x).float())
    return torch.cat(outputs)


def evaluate_loss(
    model: nn.Module, data: TensorData, task: str = "classification"
) -> tuple[float, float]:
    """(mean loss, score) of the task over ``data``, synchronised once."""
    loss, score = OBJECTIVES[task].loss_and_score(predict(model, data), data.y).tolist()
    return loss, score


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
    task: str = "classification",
    on_epoch: EpochCallback | None = None,
    desc: str = "epochs",
    progress: bool | None = None,
) -> FitResult:
    """Train with early stopping on validation loss; the best epoch's weights are restored
    (``train_params.restore: last``: the last epoch's are kept; learn.loop.run_epochs).

    ``task``: a key of reprolab.learn.objectives.OBJECTIVES (its loss and validation score).
    ``progress``: show the epoch bar (None: only on a terminal).
    """
    objective = OBJECTIVES[task]
    score_key = f"val_{objective.score}"
    device = train.y.device
    configure_backends(device, train_params.deterministic)
    augment = train_params.augment
    # The batch order comes from a CPU generator, so it is the same on every device.
    generator = torch.Generator(device="cpu").manual_seed(seed)
    augment_generator = torch.Generator(device=device).manual_seed(seed + 1)
    memory_format = _memory_format(model, train.x)
    model.to(memory_format=memory_format)
    # Under torchrun: DDP over the ranks, each taking its shard of every batch.
    step_model = distributed.wrap(model)
    step_model = torch.compile(step_model) if train_params.compile else step_model
    steps = math.ceil(len(train) / batch_size)
    schedule = _Schedule(optimizer, train_params, steps, epochs)

    def run_epoch(epoch: int) -> dict[str, float]:
        model.train()
        order = torch.randperm(len(train), generator=generator)
        if device.type == "cuda":
            order = order.pin_memory().to(device, non_blocking=True)
        else:
            order = order.to(device)
        loss_sum = torch.zeros((), device=device)
        for batch in order.split(batch_size):
            index, weight = distributed.shard(batch)
            x, y = train.batch(index)
            if augment.enabled:
                x = augment_images(x, augment.crop_padding, augment.flip, augment_generator)
            if memory_format is torch.channels_last:
                x = x.contiguous(memory_format=memory_format)
            with _autocast(device):
                loss = objective.loss(step_model(x), y)
            (loss * weight if weight != 1.0 else loss).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.after_batch()
            loss_sum.add_(loss.detach(), alpha=len(index) if weight else 0)
        schedule.after_epoch()
        distributed.sum_over_ranks(loss_sum)  # every rank's shards: the epoch's train loss
        outputs = predict(model, val, memory_format=memory_format, autocast=True)
        val_metrics = objective.loss_and_score(outputs, val.y)
        # The epoch's only host sync: train loss and validation metrics together.
        train_loss, val_loss, val_score = torch.cat(
            [(loss_sum / len(train)).view(1), val_metrics]
        ).tolist()
        return {
            "train_loss": train_loss,
            "val_loss": val_loss,
            score_key: val_score,
            "lr": optimizer.param_groups[0]["lr"],
        }

    result = run_epochs(
        model,
        epochs,
        run_epoch,
        monitor="val_loss",
        patience=train_params.patience,
        on_epoch=on_epoch,
        desc=desc,
        progress=False if not distributed.is_main() else progress,
        shown=(score_key,),
        restore=train_params.restore,
    )
    model.to(memory_format=torch.contiguous_format)
    return result
