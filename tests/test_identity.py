"""A study's name changes exactly with what decides its trials: the kernels (`numerics`), the
installed packages and the `train` keys its task's trials read; not with how many workers
run it or where it is stored. A rerun that DVC asks for therefore never reuses old trials."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import REPO

from reprolab.core.params import validate_params
from reprolab.tuning import identity


def _name(model: str, task: str, **changes) -> str:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[leaf] = value
    params = validate_params(raw, options_of=[], kinds_of=[])
    spec = params.model(model)
    ctx = SimpleNamespace(
        params=params,
        name=model,
        spec=spec,
        task=task,
        dataset="digits",
        device=torch.device("cpu"),
        tune=params.tune,
        train=params.train,
        data_md5=lambda names: {n: f"md5-of-{n}" for n in names},
        scorer_md5=lambda: "scorer-md5",
    )
    return identity.study_name(ctx)


@pytest.mark.parametrize(("model", "task"), [("mlp", "classification"), ("dcgan", "generative")])
def test_the_study_name_follows_numerics_and_packages(model, task, monkeypatch) -> None:
    base = _name(model, task)
    assert _name(model, task, numerics="native") != base
    assert _name(model, task, **{"tune.workers": 3, "tune.storage": None}) == base
    newer = {**identity.installed_versions(), "torch": "9.9.9"}
    monkeypatch.setattr(identity, "installed_versions", lambda: newer)
    assert _name(model, task) != base


def test_a_gan_study_ignores_train_keys_its_trials_never_read() -> None:
    """The GAN's trials use none of the supervised schedule, compile or augmentation keys,
    which its tune stage does not declare: changing them keeps its study (and outputs)."""
    base = _name("dcgan", "generative")
    for change in (
        {"train.scheduler": "onecycle"},
        {"train.compile": True},
        {"train.augment.crop_padding": 2},
        {"train.patience": 3},
    ):
        assert _name("dcgan", "generative", **change) == base, change
    assert _name("dcgan", "generative", **{"train.deterministic": False}) != base
    assert _name("mlp", "classification", **{"train.scheduler": "onecycle"}) != _name(
        "mlp", "classification"
    )


def test_the_packages_a_study_holds_are_pinned_ones() -> None:
    from reprolab.core.numerics import PINNED

    assert set(identity.TRIAL_PACKAGES) <= set(PINNED)
