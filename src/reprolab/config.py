"""The typed schema of params.yaml, validated before any stage does work.

Every error names the dotted key and the value it was given, e.g.
``tune.lr: low (0.1) must be below high (0.001)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from reprolab import registry


class ParamsError(ValueError):
    """params.yaml holds a value the pipeline cannot run with."""


class _Strict(BaseModel):
    # A typo'd key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveInt = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]


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
    seed: int = 0
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
    n_startup_trials: Annotated[int, Field(ge=0)] = 3
    n_warmup_steps: Annotated[int, Field(ge=0)] = 2


class TuneParams(_Strict):
    n_trials: PositiveInt = 10
    epochs: PositiveInt = 10
    lr: LogRange = LogRange(low=1e-4, high=1e-1)
    weight_decay: LogRange = LogRange(low=1e-6, high=1e-2)
    sampler_startup_trials: Annotated[int, Field(ge=0)] = 5
    pruner: PrunerParams = PrunerParams()


class StepSchedule(_Strict):
    every: PositiveInt = 10
    gamma: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5


class AugmentParams(_Strict):
    """Batched augmentation of training images on the device (validation never)."""

    # Random crop back to size after zero-padding each side by this many pixels; 0 = off.
    crop_padding: Annotated[int, Field(ge=0)] = 0
    # Random horizontal flip; off by default: a flipped digit or letter is another symbol.
    flip: bool = False

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.flip


class TrainParams(_Strict):
    max_epochs: PositiveInt = 60
    patience: PositiveInt = 8
    scheduler: Literal["none", "step", "cyclic", "onecycle"] = "none"
    step: StepSchedule = StepSchedule()
    # true: deterministic algorithms (CUDA: no cudnn.benchmark); false: fastest kernels.
    deterministic: bool = True
    # torch.compile the model for training; opt-in (compile time is paid on every run).
    compile: bool = False
    augment: AugmentParams = AugmentParams()


class ModelSpec(_Strict):
    """One entry of ``models:``; ``arch`` names a module in reprolab.models."""

    arch: str
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    batch_size: PositiveInt = 64
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        known = registry.model_names()
        if arch not in known:
            raise ValueError(f"unknown model architecture {arch!r}; known: {', '.join(known)}")
        return arch


class ImageFolderParams(_Strict):
    path: str | None = None  # root/<class>/<image> (or root/train/... + root/val/...)
    image_size: PositiveInt = 32


class ReportParams(_Strict):
    metric: Literal["accuracy", "macro_f1"] = "accuracy"


class Params(_Strict):
    seed: int = 0
    dataset: str = "digits"
    # A folder or URL prefix holding original dataset files, consulted before the source.
    mirror: str | None = None
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # torch intra-op threads; float results depend on it, so it is a param, not a guess.
    threads: PositiveInt = 2
    imagefolder: ImageFolderParams = ImageFolderParams()
    split: SplitParams = SplitParams()
    tune: TuneParams = TuneParams()
    train: TrainParams = TrainParams()
    models: dict[str, ModelSpec]
    report: ReportParams = ReportParams()

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, dataset: str) -> str:
        known = registry.dataset_names()
        if dataset not in known:
            raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(known)}")
        return dataset

    @field_validator("models")
    @classmethod
    def _some_models(cls, models: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        if not models:
            raise ValueError("at least one model is needed")
        for name in models:
            if not name.replace("_", "").isalnum():
                raise ValueError(f"model name {name!r} must be letters, digits and '_'")
        return models

    def model(self, name: str) -> ModelSpec:
        if name not in self.models:
            raise ParamsError(
                f"models.{name}: no such model in params.yaml; have: {', '.join(self.models)}"
            )
        return self.models[name]


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {err.error_count()} invalid value(s)"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (got {e['input']!r}); check its spelling")
        elif e["type"] == "missing":
            lines.append(f"  {key}: required but missing")
        else:
            lines.append(f"  {key}: {msg} (got {e['input']!r})")
    return "\n".join(lines)


def validate_params(
    raw: dict[str, Any], source: str = "params.yaml", options_of: Iterable[str] | None = None
) -> Params:
    """Validate a parsed params mapping; raise ParamsError naming each bad key and value.

    ``options_of`` names the models whose arch ``options`` are checked too (default: all).
    Checking them imports the arch modules (and torch), so a stage checks only its own.
    """
    if not isinstance(raw, dict):
        raise ParamsError(
            f"{source}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_error(err, source)) from None
    for name in params.models if options_of is None else options_of:
        spec = params.model(name)
        registry.validate_model_options(spec.arch, spec.options, key=f"models.{name}.options")
    return params


def load_params(
    path: str | os.PathLike[str] = "params.yaml", options_of: Iterable[str] | None = None
) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the repo root)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return validate_params(raw or {}, source=str(path), options_of=options_of)
