"""The typed schema of params.yaml (pydantic, strict: an unknown key is an error).

reprolab.core.params loads and validates a file against it before any stage does work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from reprolab.core import paths, registry
from reprolab.core.errors import ParamsError, shown
from reprolab.core.kinds import CsvParams, ImageFolderParams, kind_task, unset_own_source
from reprolab.core.specs import (
    Count,
    Fraction,
    GeneratorSpec,
    Launcher,
    ModelSpec,
    PositiveInt,
    Seed,
    _Strict,
)


class LogRange(_Strict):
    low: Annotated[float, Field(gt=0.0)]
    high: Annotated[float, Field(gt=0.0)]

    @model_validator(mode="after")
    def _ordered(self) -> LogRange:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class SplitParams(_Strict):
    val_fraction: Fraction = 0.15
    test_fraction: Fraction = 0.15
    seed: Seed = 0
    # Use a dataset's published test split (MNIST, CIFAR...) instead of test_fraction.
    official_test: bool = True

    @model_validator(mode="after")
    def _room_for_train(self) -> SplitParams:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction ({self.val_fraction} + {self.test_fraction})"
                " must leave room for a train split (< 1)"
            )
        return self


class PrunerParams(_Strict):
    # median: Optuna's MedianPruner; successive_halving / hyperband: multi-fidelity pruning
    # over 1..tune.epochs (min_epochs, reduction_factor).
    kind: Literal["median", "successive_halving", "hyperband"] = "median"
    n_startup_trials: Count = 3  # median
    n_warmup_steps: Count = 2  # median
    min_epochs: PositiveInt = 1  # successive_halving, hyperband
    reduction_factor: Annotated[int, Field(ge=2, strict=True)] = 3  # successive_halving, hyperband


RDB_SCHEMES = ("sqlite", "postgresql", "mysql")


class TuneParams(_Strict):
    n_trials: PositiveInt = 10
    epochs: PositiveInt = 10
    lr: LogRange = LogRange(low=1e-4, high=1e-1)
    weight_decay: LogRange = LogRange(low=1e-6, high=1e-2)
    sampler_startup_trials: Count = 5
    pruner: PrunerParams = PrunerParams()
    # Low-fidelity trials: each trial trains on at most this many train rows (a seeded
    # subsample, stratified by class for classifiers; validation stays whole). None: all.
    train_rows: PositiveInt | None = None
    # Trials per batch: a trial sees only earlier batches, so workers never change results.
    batch: PositiveInt = 1
    workers: PositiveInt = 1  # the tune stage's processes (`reprolab tune-worker` adds more)
    # Optuna RDB URL; REPROLAB_OPTUNA_STORAGE overrides it; None: SQLite in the workspace.
    storage: str | None = None

    @field_validator("storage")
    @classmethod
    def _rdb_url(cls, url: str | None) -> str | None:
        """An RDB URL Optuna can open; an SQLite file's folder must exist (nothing creates it)."""
        if url is None:
            return url
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.split("+")[0] not in RDB_SCHEMES:
            raise ValueError(
                f"not an RDB URL; give {' | '.join(f'{s}://...' for s in RDB_SCHEMES)} or null"
            )
        if scheme == "sqlite":
            folder = Path(rest.removeprefix("/")).parent if rest.startswith("/") else None
            if folder is not None and not folder.is_dir():
                raise ValueError(f"the folder {folder} of the SQLite file does not exist")
        return url


class StepSchedule(_Strict):
    every: PositiveInt = 10
    gamma: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5


class AugmentParams(_Strict):
    """Batched augmentation of training images on the device (validation never)."""

    # Random crop back to size after zero-padding each side by this many pixels; 0 = off.
    crop_padding: Count = 0
    # Random horizontal flip; off by default: a flipped digit or letter is another symbol.
    flip: bool = False

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.flip


class TrainParams(_Strict):
    max_epochs: PositiveInt = 60
    patience: PositiveInt = 8
    # Weights kept: the epoch of least validation loss, or the last (OneCycle annealed to it).
    restore: Literal["best", "last"] = "best"
    scheduler: Literal["none", "step", "cyclic", "onecycle"] = "none"
    step: StepSchedule = StepSchedule()
    # true: deterministic algorithms (CUDA: no cudnn.benchmark); false: fastest kernels.
    deterministic: bool = True
    # torch.compile the model for training; opt-in (compile time is paid on every run).
    compile: bool = False
    augment: AugmentParams = AugmentParams()
    # How the train stage runs: python (this process), or torchrun's flags for several
    # processes (DistributedDataParallel), e.g. "torchrun --standalone --nproc_per_node 2".
    launcher: Launcher = "python"


class DatasetsParams(_Strict):
    """One dataset per kind of input: each model group reads the one of its kind."""

    image: str = "digits"  # the classifiers (and generators) train on these images
    tabular: str = "diabetes"  # the regressors train on these feature rows

    @field_validator("image", "tabular")
    @classmethod
    def _known(cls, name: str) -> str:
        known = registry.dataset_names()
        if name not in known:
            raise ValueError(f"unknown dataset {shown(name)}; known: {', '.join(known)}")
        return name

    def check_kind(self, kind: str) -> None:
        """``datasets.<kind>`` names a dataset of that kind (this imports its module)."""
        name = getattr(self, kind)
        actual = registry.dataset_kind(name)
        if actual != kind:
            of_kind = [n for n in registry.dataset_names() if registry.dataset_kind(n) == kind]
            raise ParamsError(
                f"datasets.{kind}: {name!r} is a(n) {actual} dataset; {kind} datasets: "
                + ", ".join(of_kind)
            )


# Each group of models: the kind of dataset it reads and the task it learns (the regressors:
# the table's task, kind_task: regression, or classification for a user's table of classes).
GROUPS: dict[str, tuple[str, str]] = {
    "classifiers": ("image", "classification"),
    "regressors": ("tabular", "regression"),
    "generators": ("image", "generative"),
}


class BaselineParams(_Strict):
    """scikit-learn baselines per dataset kind; each becomes a leaderboard row."""

    image: list[Literal["logistic_regression", "rbf_svm"]] = ["logistic_regression", "rbf_svm"]
    # Those of the table's task run: ridge (regression) and the two classifiers (a user's table).
    tabular: list[Literal["ridge", "logistic_regression", "rbf_svm"]] = ["ridge"]
    # Fit on at most this many (seeded, random) train rows: an RBF SVM is O(n^2) or worse.
    max_rows: PositiveInt = 5000


class ReportParams(_Strict):
    # Ranks the classifiers (regressors rank by validation RMSLE, lower first).
    metric: Literal["accuracy", "macro_f1"] = "accuracy"


class Params(_Strict):
    seed: Seed = 0
    datasets: DatasetsParams = DatasetsParams()
    # A folder or URL prefix holding original dataset files, consulted before the source.
    mirror: str | None = None
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # CPU threads (torch's and the BLAS under numpy and scikit-learn); float results depend
    # on it, so it is a param, not a guess.
    threads: PositiveInt = 2
    # portable: CPU kernels capped to AVX2, so results are bit-identical on every x86-64
    # machine with AVX2 (core.numerics); native: the fastest kernels of this CPU.
    numerics: Literal["portable", "native"] = "portable"
    imagefolder: ImageFolderParams = ImageFolderParams()
    csv: CsvParams = CsvParams()
    split: SplitParams = SplitParams()
    tune: TuneParams = TuneParams()
    train: TrainParams = TrainParams()
    classifiers: dict[str, ModelSpec]
    regressors: dict[str, ModelSpec] = Field(default_factory=dict)
    generators: dict[str, GeneratorSpec] = Field(default_factory=dict)
    baselines: BaselineParams = BaselineParams()
    report: ReportParams = ReportParams()

    @field_validator("classifiers", "regressors", "generators")
    @classmethod
    def _names(cls, models: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        for name in models:
            if not name.replace("_", "").isalnum():
                raise ValueError(f"model name {shown(name)} must be letters, digits and '_'")
            paths.check_key_fits(name)
        return models

    @field_validator("generators")
    @classmethod
    def _scored_by_classifiers(
        cls, generators: dict[str, GeneratorSpec], info: ValidationInfo
    ) -> dict[str, GeneratorSpec]:
        if "classifiers" not in info.data:
            return generators  # classifiers failed validation: that error is the one to report
        classifiers = info.data["classifiers"]
        for name, spec in generators.items():
            scorer = spec.scorer
            if scorer.model not in classifiers:
                raise ValueError(
                    f"{name}.scorer.model {shown(scorer.model)} is not a key of classifiers "
                    f"({', '.join(classifiers)}): the scorer is a classifier the pipeline trains"
                )
            if scorer.arch != classifiers[scorer.model].arch:
                raise ValueError(
                    f"{name}.scorer.arch {scorer.arch!r} differs from classifiers."
                    f"{scorer.model}.arch {classifiers[scorer.model].arch!r}"
                )
        return generators

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        if not self.classifiers:
            raise ValueError("classifiers: at least one model is needed")
        d = self.datasets  # a user's own dataset is named where it is, before any stage runs
        if unset := unset_own_source(d.image, d.tabular, self.imagefolder, self.csv):
            raise ValueError(unset)
        seen: dict[str, str] = {}
        for group in GROUPS:
            for name in getattr(self, group):
                if name == "baselines":
                    raise ValueError(f"{group}.baselines: the name is taken by the baselines")
                if name in seen:
                    raise ValueError(
                        f"model name {name!r} is in both {seen[name]} and {group}; "
                        "names must be unique (each has its own models/<name>/ folder)"
                    )
                seen[name] = group
        return self

    def all_models(self) -> dict[str, ModelSpec]:
        """Every model of every group, by name."""
        return {name: spec for group in GROUPS for name, spec in getattr(self, group).items()}

    def group_of(self, name: str) -> str:
        for group in GROUPS:
            if name in getattr(self, group):
                return group
        have = ", ".join(self.all_models())
        raise ParamsError(
            f"{name}: no such model in params.yaml (groups: {', '.join(GROUPS)}); have: {have}"
        )

    def model(self, name: str) -> ModelSpec:
        return getattr(self, self.group_of(name))[name]

    def kind_of(self, name: str) -> str:
        """The kind of dataset (``image``/``tabular``) model ``name`` reads."""
        return GROUPS[self.group_of(name)][0]

    def task_of(self, name: str) -> str:
        task = GROUPS[self.group_of(name)][1]
        return kind_task("tabular") if self.kind_of(name) == "tabular" else task

    def dataset_of(self, name: str) -> str:
        return getattr(self.datasets, self.kind_of(name))

    def tune_for(self, name: str) -> TuneParams:
        """``tune`` with the model's budget overrides applied."""
        budget = self.model(name).budget
        update = {k: v for k, v in (("n_trials", budget.n_trials), ("epochs", budget.epochs)) if v}
        return self.tune.model_copy(update=update)

    def train_for(self, name: str) -> TrainParams:
        budget = self.model(name).budget
        if budget.max_epochs is None:
            return self.train
        return self.train.model_copy(update={"max_epochs": budget.max_epochs})
