"""The learning-rate range test (Leslie Smith, 2015): raise the lr exponentially, batch by
batch, from ``start_lr`` to ``end_lr`` and watch the training loss.

The loss falls fastest somewhere below the lr where it bottoms out and blows up beyond it.
The suggested Optuna range is [steepest / 10, lr at the loss minimum]: the steepest-descent
lr is a good single choice, and nothing beyond the minimum trains stably.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from reprolab.core.errors import ParamsError
from reprolab.core.schema import ModelSpec
from reprolab.learn.engine import make_optimizer
from reprolab.learn.loop import progress_bar
from reprolab.learn.objectives import OBJECTIVES
from reprolab.learn.tensors import TensorData

# Fewer smoothed points than this give no slope to pick the steepest descent from.
MIN_STEPS = 3


@dataclass
class RangeTest:
    lrs: list[float]
    losses: list[float]  # exponentially smoothed, as plotted
    steepest: float
    minimum: float

    @property
    def suggested(self) -> tuple[float, float]:
        return self.steepest / 10, max(self.minimum, self.steepest)


def check_range(start_lr: float, end_lr: float, steps: int) -> None:
    """Raise ParamsError, naming the values, unless 0 < start_lr < end_lr (finite) and
    there are enough steps for a slope."""
    if not (0 < start_lr < end_lr < math.inf):
        raise ParamsError(f"lr-find: need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if steps < MIN_STEPS:
        raise ParamsError(f"lr-find: need at least {MIN_STEPS} steps, got {steps}")


def check_out_folder(out: Path) -> None:
    """Refuse an --out that cannot take the results before the range test runs (a minute):
    a file, a folder below a file, or a folder this user cannot write."""
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            raise ParamsError(
                f"lr-find: --out {out}: {folder} is a file, not a folder; give a folder "
                "(default reports/lr_find)"
            )
        if folder.is_dir():
            if not os.access(folder, os.W_OK | os.X_OK):
                raise ParamsError(f"lr-find: --out {out}: {folder} is not writable")
            return


def lr_range_test(
    model: nn.Module,
    train: TensorData,
    spec: ModelSpec,
    *,
    start_lr: float = 1e-6,
    end_lr: float = 1.0,
    steps: int = 100,
    seed: int = 0,
    task: str = "classification",
    smoothing: float = 0.9,
    diverge_factor: float = 4.0,
    progress: bool | None = None,
) -> RangeTest:
    """``progress``: show a bar of the steps (None: only on a terminal, as the epoch bar)."""
    check_range(start_lr, end_lr, steps)
    if task not in OBJECTIVES:
        raise ParamsError(
            f"lr-find: task {task!r} has no single training loss; "
            "the range test takes classification or regression"
        )
    optimizer = make_optimizer(model, spec, lr=start_lr, weight_decay=0.0)
    scales = [g["lr"] / start_lr for g in optimizer.param_groups]  # keep per-group ratios
    growth = (end_lr / start_lr) ** (1 / max(1, steps - 1))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=generator).to(train.y.device)
    model.train()
    lrs, losses = [], []
    average, best = 0.0, math.inf
    with progress_bar(range(steps), desc="lr-find", progress=progress) as bar:
        for step in bar:
            lr = start_lr * growth**step
            for group, scale in zip(optimizer.param_groups, scales, strict=True):
                group["lr"] = lr * scale
            start = (step * spec.batch_size) % max(1, len(train) - spec.batch_size + 1)
            x, y = train.batch(order[start : start + spec.batch_size])
            loss = OBJECTIVES[task].loss(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                break
            average = smoothing * average + (1 - smoothing) * value
            smoothed = average / (1 - smoothing ** (step + 1))  # bias-corrected
            lrs.append(lr)
            losses.append(smoothed)
            best = min(best, smoothed)
            bar.set_postfix(lr=f"{lr:.2g}", loss=f"{smoothed:.4f}", refresh=False)
            if smoothed > diverge_factor * best:
                break
    if len(losses) < MIN_STEPS:
        raise ParamsError(f"lr-find: the loss diverged within {len(losses)} steps; lower start_lr")
    minimum = lrs[losses.index(min(losses))]
    logs = [math.log10(lr) for lr in lrs]
    slopes = [
        (losses[i + 1] - losses[i - 1]) / (logs[i + 1] - logs[i - 1])
        for i in range(1, losses.index(min(losses)) + 1)
        if i + 1 < len(losses)
    ]
    steepest = lrs[1 + slopes.index(min(slopes))] if slopes else minimum
    return RangeTest(lrs=lrs, losses=losses, steepest=steepest, minimum=minimum)


def plot_range_test(result: RangeTest, title: str, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low, high = result.suggested
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(result.lrs, result.losses)
    ax.axvspan(low, high, alpha=0.2, label=f"suggested [{low:.2g}, {high:.2g}]")
    ax.axvline(result.steepest, linestyle="--", label=f"steepest {result.steepest:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title=title)
    ax.set_ylim(min(result.losses) * 0.9, result.losses[0] * 1.3)  # not the blow-up's scale
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
