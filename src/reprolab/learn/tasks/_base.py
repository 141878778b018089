"""The contract every learning task implements for the tune, train and evaluate stages.

A task is a module of reprolab.learn.tasks holding ``TASK``, an instance of ``Task``; a group
of params.yaml (core.schema.GROUPS) names the task its models learn. The stages and the
tuning call only these methods, so a new task is one new module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from torch import nn

from reprolab.core.schema import Params
from reprolab.learn.context import ModelContext
from reprolab.learn.loop import EpochCallback, FitResult

# A trial's training: (lr, weight_decay, on_epoch, desc) -> (best objective, its epoch).
TrialFit = Callable[[float, float, EpochCallback, str], tuple[float, int]]


class Task(ABC):
    name: str
    # The per-epoch row key that tuning minimises and early stopping watches.
    objective: str
    # The keys of ``train`` a trial reads: part of the study identity, and exactly the
    # ``train.*`` params its tune stage declares in dvc.yaml (tests/test_dag.py).
    trial_train_keys: tuple[str, ...]
    # Whether train_final runs under train.launcher's torchrun (DistributedDataParallel).
    distributed: bool = False

    def context(self, params: Params, model: str) -> ModelContext:
        """Device, data and builder of ``model`` (seeds and threads set)."""
        return ModelContext(params, model)

    def identity(self, ctx: ModelContext) -> dict:
        """What else than params, data and code decides a trial's result (study identity)."""
        return {}

    @abstractmethod
    def trial_fitter(self, ctx: ModelContext) -> TrialFit:
        """How one Optuna trial trains, worth the best ``objective`` over its epochs."""

    @abstractmethod
    def train_final(self, ctx: ModelContext, best: dict, tags: dict[str, str]) -> dict | None:
        """Train with the tuned params; write the model, its curves and train.json; log and
        register it in MLflow. Returns the metrics (None on torchrun's other ranks)."""

    @abstractmethod
    def evaluate(self, ctx: ModelContext, tags: dict[str, str]) -> dict:
        """The one test evaluation: metrics/<model>/test.json and the test plot."""


def describe_run(ctx: ModelContext, result: FitResult, best: dict, counted: nn.Module) -> dict:
    """train.json's ``train`` block: the epoch of least validation loss, the epoch whose
    weights are kept (train.restore), epochs run, the params trained with and the size of
    ``counted``."""
    return {
        "best_epoch": result.best_epoch,
        "kept_epoch": result.kept_epoch,
        "epochs_run": len(result.history),
        "lr": best["lr"],
        "weight_decay": best["weight_decay"],
        "n_parameters": sum(t.numel() for t in counted.parameters()),
    }
