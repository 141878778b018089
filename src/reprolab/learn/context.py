"""What the tune, train and evaluate stages share for one model: device, data, builder."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from reprolab.core import numerics, paths
from reprolab.core.errors import ParamsError
from reprolab.core.io import md5_file
from reprolab.core.kinds import learned_stats
from reprolab.core.schema import ModelSpec, Params, TrainParams, TuneParams
from reprolab.learn.device import seed_everything, select_device
from reprolab.learn.objectives import OBJECTIVES, objective_key
from reprolab.learn.tensors import TensorData, load_meta, load_split, subsample
from reprolab.models._base import ModelSpec as ArchSpec
from reprolab.models._base import build_model


@dataclass
class ModelContext:
    params: Params
    name: str

    def __post_init__(self) -> None:
        self.spec: ModelSpec = self.params.model(self.name)
        self.group: str = self.params.group_of(self.name)
        self.kind: str = self.params.kind_of(self.name)  # image | tabular
        self.task: str = self.params.task_of(self.name)
        self.dataset: str = self.params.dataset_of(self.name)
        # The shared budgets with this model's overrides (models.<name>.budget).
        self.tune: TuneParams = self.params.tune_for(self.name)
        self.train: TrainParams = self.params.train_for(self.name)
        self.device: torch.device = select_device(self.params.device)
        seed_everything(self.params.seed, self.params.threads)
        self._md5: dict[str, str] = {}

    @cached_property
    def meta(self) -> dict:
        return load_meta(paths.splits_dir(self.kind))

    @cached_property
    def objective(self) -> str:
        """The OBJECTIVES key of this model: its task (a linear-scale regression's own key)."""
        return objective_key(self.task, self.meta)

    @cached_property
    def arch_spec(self) -> ArchSpec:
        meta = self.meta
        scale = None
        if self.task == "regression":  # the statistics of what it learns (log1p, or linear)
            stats = learned_stats(meta)
            scale = (meta[f"{stats}_mean"], meta[f"{stats}_std"])
        return ArchSpec(
            arch=self.spec.arch,
            options=dict(self.spec.options),
            input_shape=tuple(meta["input_shape"]),
            n_outputs=OBJECTIVES[self.objective].n_outputs(meta),
            mean=meta["mean"],
            std=meta["std"],
            target_scale=scale,
        )

    def new_model(self) -> nn.Module:
        """A freshly initialised model; the same seed gives the same weights every call."""
        torch.manual_seed(self.params.seed)
        return build_model(self.arch_spec).to(self.device)

    def load(self, split: str) -> TensorData:
        return load_split(paths.split_file(self.kind, split), self.device)

    def trial_train(self) -> TensorData:
        """The train rows an Optuna trial fits on: ``tune.train_rows`` of them (seeded,
        stratified for classifiers) or all."""
        stratify = self.task == "classification"
        rows = self.tune.train_rows
        if stratify and rows is not None and rows < len(self.meta["classes"]):
            raise ParamsError(
                f"tune.train_rows: {rows} is fewer than the {len(self.meta['classes'])} classes "
                f"of {self.dataset}; give at least one row per class, or null for all"
            )
        return subsample(self.load("train"), rows, self.params.seed, stratify)

    def data_files(self, splits: tuple[str, ...]) -> list[tuple[str, str, str]]:
        """(split, path, md5) of each split file read, for the runs' lineage."""
        return [
            (s, paths.split_file(self.kind, s).as_posix(), md5) for s, md5 in self.data_md5(splits)
        ]

    def data_md5(self, splits: tuple[str, ...]) -> list[tuple[str, str]]:
        """md5 of each split file read: the same hash DVC records for it in dvc.lock (read
        once per context: the study name, its attributes and the run tags all need it)."""
        for s in splits:
            if s not in self._md5:
                self._md5[s] = md5_file(paths.split_file(self.kind, s))
        return [(s, self._md5[s]) for s in splits]

    @property
    def environment(self) -> dict[str, str]:
        """What model.json records of the run's environment: the numerics mode, the CPUs its
        bits hold on (core.numerics.provenance_cpu: in portable mode the class, the same text
        on every such CPU; the exact CPU is in the run's MLflow tags) and the torch release
        (not the build tag, e.g. +cpu / +cu130)."""
        return {
            "numerics": self.params.numerics,
            # On a GPU the device's model decides the bits (MLflow tags record it).
            "cpu": numerics.provenance_cpu(self.params.numerics)
            if self.device.type == "cpu"
            else f"not used for the kernels (device: {self.device.type})",
            "torch": torch.__version__.split("+")[0],
            "device": self.device.type,
            "threads": self.params.threads,
        }
