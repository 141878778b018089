"""The epoch driver every training loop shares: progress bar, history, divergence check,
best-epoch tracking with its weights restored (or the last epoch's kept), early stopping and
the per-epoch callback.

A loop (engine.fit for classifiers and regressors, gan.fit_gan for GANs) supplies only
``run_epoch(epoch) -> row``: one epoch of its own updates and its validation numbers.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from reprolab.core.errors import DivergedError

# (epoch, row) after each epoch; it may raise (optuna.TrialPruned) to stop the loop.
EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class FitResult:
    monitor: str  # the row key whose minimum picks the best epoch (val_loss, val_fid)
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float = math.inf
    kept_epoch: int = 0  # the epoch whose weights the model holds after run_epochs

    @property
    def kept(self) -> dict[str, float]:
        """The row of the epoch whose weights the model holds after ``run_epochs``."""
        return self.history[self.kept_epoch - 1]


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def progress_bar(items: Iterable, *, desc: str, progress: bool | None = None) -> tqdm:
    """A transient tqdm bar over ``items``. ``progress``: True always, False never, None
    only on a terminal (tqdm's ``disable=None``: its stream, stderr, is a TTY), so a pipe,
    a log file or CI gets no bar."""
    return tqdm(items, desc=desc, leave=False, disable=None if progress is None else not progress)


# Off a terminal the bar is off; a line per epoch says a long stage is moving instead, at
# most one every EPOCH_LINE_S seconds (the first epoch's always, and a last line at the end).
EPOCH_LINE_S = 5.0


class EpochLines:
    """Short progress lines on stderr for a log or CI, where no bar is drawn."""

    def __init__(self, desc: str, epochs: int) -> None:
        self.desc, self.epochs, self.every_s = desc, epochs, EPOCH_LINE_S
        self.shown_at, self.shown_epoch = -math.inf, 0

    def epoch(self, epoch: int, row: dict[str, float], keys: tuple[str, ...]) -> None:
        if time.monotonic() - self.shown_at < self.every_s and epoch > 1:
            return
        numbers = " ".join(f"{k} {row[k]:.4g}" for k in keys)
        print(f"{self.desc}: epoch {epoch}/{self.epochs} {numbers}", file=sys.stderr, flush=True)
        self.shown_at, self.shown_epoch = time.monotonic(), epoch

    def done(self, result: FitResult) -> None:
        print(
            f"{self.desc}: {len(result.history)} epochs, best {result.best_epoch} "
            f"({result.monitor} {result.best_value:.4g})",
            file=sys.stderr,
            flush=True,
        )


def run_epochs(
    model: nn.Module,
    epochs: int,
    run_epoch: Callable[[int], dict[str, float]],
    *,
    monitor: str,
    patience: int | None = None,
    on_epoch: EpochCallback | None = None,
    desc: str = "epochs",
    progress: bool | None = None,
    shown: tuple[str, ...] = (),
    restore: str = "best",
) -> FitResult:
    """Run up to ``epochs`` epochs; keep the weights of the epoch with the lowest
    ``row[monitor]`` and restore them at the end (``restore="last"``: keep the last epoch's,
    as a schedule that anneals to the end wants); stop after ``patience`` epochs without a
    better one. Any non-finite number in a row raises DivergedError (a NaN loss, or a
    finite loss that blew up into inf).

    ``progress``: show the bar (None: only on a terminal, else EpochLines; False: nothing, as
    under torchrun's other ranks).
    """
    result = FitResult(monitor=monitor)
    best_state = state_copy(model)
    since_best = 0
    bar = progress_bar(range(1, epochs + 1), desc=desc, progress=progress)
    lines = EpochLines(desc, epochs) if progress is None and bar.disable else None
    for epoch in bar:
        row = {"epoch": epoch, **run_epoch(epoch)}
        broken = [f"{k} {v}" for k, v in row.items() if not math.isfinite(v)]
        if broken:
            raise DivergedError(f"loss diverged at epoch {epoch} ({', '.join(broken)})")
        result.history.append(row)
        bar.set_postfix({k: f"{row[k]:.4f}" for k in (monitor, *shown)})
        if lines is not None:
            lines.epoch(epoch, row, (monitor, *shown))
        if row[monitor] < result.best_value:
            result.best_value, result.best_epoch = row[monitor], epoch
            best_state = state_copy(model) if restore == "best" else best_state
            since_best = 0
        else:
            since_best += 1
        if on_epoch is not None:
            on_epoch(epoch, row)
        if patience is not None and since_best >= patience:
            break
    bar.close()
    if lines is not None:
        lines.done(result)
    if restore == "best":
        model.load_state_dict(best_state)
    result.kept_epoch = result.best_epoch if restore == "best" else len(result.history)
    return result
