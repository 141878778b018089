"""The model entries of params.yaml (``classifiers:``, ``regressors:``, ``generators:``) and
the strict base every params block derives from."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from reprolab.core import registry
from reprolab.core.errors import shown


class _Strict(BaseModel):
    # A typo'd key is an error, not a silently ignored setting; .inf and .nan are refused.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Integers are strict: `true` or "3" is not a count (YAML's true would otherwise be 1).
PositiveInt = Annotated[int, Field(ge=1, strict=True)]
Count = Annotated[int, Field(ge=0, strict=True)]
# numpy seeds its generators with 32 bits; the pipeline derives a few seeds above it (+1, +2).
Seed = Annotated[int, Field(ge=0, le=2**31 - 1, strict=True)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]

# torchrun's process and rendezvous flags: the train stage starts torch.distributed.run with
# them itself, without a shell; nothing that names a file, a program or a shell word.
TORCHRUN_SWITCHES = {"standalone"}  # flags without a value
_COUNT, _HOST = r"[1-9][0-9]*", r"[A-Za-z0-9_.-]+"
TORCHRUN_OPTIONS = {  # option -> the values torchrun takes
    "nnodes": rf"{_COUNT}(:{_COUNT})?",
    "nproc_per_node": rf"{_COUNT}|auto|cpu|gpu|xpu",
    "node_rank": r"[0-9]+",
    "rdzv_backend": r"[a-z0-9_-]+",
    "rdzv_endpoint": rf"{_HOST}(:[0-9]+)?",
    "rdzv_id": _HOST,
    "master_addr": _HOST,
    "master_port": r"[0-9]+",
    "max_restarts": r"[0-9]+",
    "monitor_interval": r"[0-9]+(\.[0-9]+)?",
}
_FLAG = re.compile(r"--([a-z_-]+)(?:=(.*))?")


def _flags_ok(words: list[str]) -> bool:
    """``--switch``, ``--option value`` or ``--option=value`` with a value torchrun takes, and
    nothing else: a stray word would be the script torchrun runs."""
    while words:
        flag = _FLAG.fullmatch(words.pop(0))
        if flag is None:
            return False
        name, value = flag[1].replace("-", "_"), flag[2]
        if name in TORCHRUN_SWITCHES and value is None:
            continue
        if name not in TORCHRUN_OPTIONS:
            return False
        value = value if value is not None else (words.pop(0) if words else "")
        if not re.fullmatch(TORCHRUN_OPTIONS[name], value):
            return False
    return True


def _launcher(value: str) -> str:
    words = value.split()
    if words == ["python"] or (
        words[:1] == ["torchrun"] and len(words) > 1 and _flags_ok(words[1:])
    ):
        return " ".join(words)
    raise ValueError(
        "must be python, or torchrun with its process and rendezvous flags ("
        + ", ".join(f"--{f}" for f in sorted(TORCHRUN_SWITCHES | set(TORCHRUN_OPTIONS)))
        + "), each option with one value, e.g. 'torchrun --standalone --nproc_per_node 2'"
    )


Launcher = Annotated[str, AfterValidator(_launcher)]


class Budget(_Strict):
    """Per-model overrides of the shared tuning and training budget (heavy models get less)."""

    n_trials: PositiveInt | None = None  # tune.n_trials for this model
    epochs: PositiveInt | None = None  # tune.epochs for this model
    max_epochs: PositiveInt | None = None  # train.max_epochs for this model


class ModelSpec(_Strict):
    """One model entry; ``arch`` names a module in reprolab.models."""

    arch: str
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    batch_size: PositiveInt = 64
    options: dict[str, Any] = Field(default_factory=dict)
    budget: Budget = Budget()

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        known = registry.model_names()
        if arch not in known:
            raise ValueError(f"unknown model architecture {shown(arch)}; known: {', '.join(known)}")
        return arch


class ScorerSpec(_Strict):
    """The classifier whose features score a generator: a key of ``classifiers:`` and its
    arch, repeated because dvc.yaml lists the arch's module as a dep and cannot look it up."""

    model: str
    arch: str


class GeneratorSpec(ModelSpec):
    """A ``generators:`` entry: a GAN (a generative arch) on the image dataset, tuned, kept and
    tested on the Fréchet distance in ``scorer``'s features (see reprolab.learn.features). Its
    optimisers are the tutorial's two Adams (beta1 in ``options``); ``budget`` as for models."""

    scorer: ScorerSpec

    @field_validator("optimizer")
    @classmethod
    def _adam(cls, optimizer: str) -> str:
        if optimizer != "adam":
            raise ValueError("a GAN trains with two Adam optimisers (beta1 in options)")
        return optimizer
