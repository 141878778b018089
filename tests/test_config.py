"""Bad params stop a stage before any work, naming the key and the value."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, clean_env, deep_merge

from reprolab.core.errors import ParamsError
from reprolab.core.params import load_params, validate_params

DEFAULT = yaml.safe_load((REPO / "params.yaml").read_text())

BAD = {
    "unknown model arch": (
        {"classifiers": {"mlp": {"arch": "transformer"}}},
        "classifiers.mlp.arch",
        "transformer",
    ),
    "lr bounds reversed": ({"tune": {"lr": {"low": 0.1, "high": 0.001}}}, "tune.lr", "0.1"),
    "val fraction above 1": ({"split": {"val_fraction": 1.5}}, "split.val_fraction", "1.5"),
    "val fraction zero": ({"split": {"val_fraction": 0}}, "split.val_fraction", "0"),
    "no trials": ({"tune": {"n_trials": 0}}, "tune.n_trials", "0"),
    "zero budget override": (
        {"classifiers": {"mlp": {"budget": {"epochs": 0}}}},
        "classifiers.mlp.budget.epochs",
        "0",
    ),
    "conv arch on feature rows": (
        {"regressors": {"tabular_mlp": {"arch": "lenet"}}},
        "regressors.tabular_mlp.arch",
        "image input",
    ),
    "unknown baseline": ({"baselines": {"tabular": ["lasso"]}}, "baselines.tabular.0", "lasso"),
    "unknown device": ({"device": "tpu"}, "device", "tpu"),
    "unknown dataset": ({"datasets": {"image": "imagenet"}}, "datasets", "imagenet"),
    "old single dataset key": ({"dataset": "mnist"}, "dataset", "unknown key"),
    "typo'd key": ({"tune": {"n_trial": 5}}, "tune.n_trial", "5"),
    "bad model option": (
        {"classifiers": {"mlp": {"options": {"dropout": 2.0}}}},
        "classifiers.mlp.options.dropout",
        "2.0",
    ),
    "unknown optimizer": (
        {"classifiers": {"lenet": {"optimizer": "adagrad"}}},
        "classifiers.lenet.optimizer",
        "adagrad",
    ),
}


def run_stage_script(script: str, model: str, cwd: Path) -> subprocess.CompletedProcess:
    """A stage script of this checkout, run in ``cwd`` (which holds only params.yaml)."""
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / script), model],
        cwd=cwd,
        env=clean_env(PYTHONPATH=str(REPO / "src")),
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_params_stop_a_stage_naming_key_and_value(case: str, tmp_path: Path) -> None:
    override, key, value = BAD[case]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(deep_merge(DEFAULT, override)))
    model = "tabular_mlp" if "tabular_mlp" in key else "mlp"
    result = run_stage_script("tune.py", model, tmp_path)
    assert result.returncode != 0
    assert key in result.stderr and value in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing produced


def test_a_model_missing_from_params_is_named(tmp_path: Path) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    result = run_stage_script("train.py", "vgg", tmp_path)
    assert result.returncode != 0 and "vgg: no such model" in result.stderr


def test_the_shipped_params_are_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert set(params.classifiers) >= {"mlp", "lenet", "cnn", "alexnet", "resnet18"}
    assert set(params.regressors) >= {"tabular_mlp"}
    assert params.tune_for("resnet18").n_trials < params.tune.n_trials  # budget override


def test_split_fractions_must_leave_a_train_split() -> None:
    with pytest.raises(ParamsError, match="split: val_fraction \\+ test_fraction"):
        validate_params(deep_merge(DEFAULT, {"split": {"val_fraction": 0.5, "test_fraction": 0.5}}))


def test_missing_params_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_all_arch_options_are_checked_by_default() -> None:
    bad = deep_merge(DEFAULT, {"classifiers": {"cnn": {"options": {"width": 0}}}})
    validate_params(bad, options_of=["mlp"])  # a stage of another model is not stopped
    with pytest.raises(ParamsError, match="classifiers.cnn.options.width"):
        validate_params(bad)


def test_reprolab_check_validates_every_model(tmp_path: Path) -> None:
    bad = deep_merge(DEFAULT, {"classifiers": {"cnn": {"options": {"width": 0}}}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    cmd = [sys.executable, "-m", "reprolab.cli", "check"]
    env = clean_env(PYTHONPATH=str(REPO / "src"))
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "classifiers.cnn.options.width" in result.stderr
    ok = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_a_model_name_is_unique_across_groups() -> None:
    twice = deep_merge(DEFAULT, {"regressors": {"mlp": {"arch": "tabular_mlp"}}})
    with pytest.raises(ParamsError, match="'mlp' is in both classifiers and regressors"):
        validate_params(twice, options_of=[])


def test_a_dataset_of_the_wrong_kind_stops_its_data_stage(tmp_path: Path) -> None:
    bad = deep_merge(DEFAULT, {"datasets": {"tabular": "mnist"}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    result = run_stage_script("download.py", "tabular", tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "datasets.tabular: 'mnist' is a(n) image dataset" in result.stderr, result.stderr
    assert "diabetes" in result.stderr  # names the datasets of that kind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
    with pytest.raises(ParamsError, match="datasets.tabular: 'mnist'"):
        validate_params(bad)  # reprolab check: every kind
