"""Bad params stop a stage before any work, naming the key and the value."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, clean_env, deep_merge

from reprolab.config import ParamsError, load_params, validate_params

DEFAULT = yaml.safe_load((REPO / "params.yaml").read_text())

BAD = {
    "unknown model arch": (
        {"models": {"mlp": {"arch": "transformer"}}},
        "models.mlp.arch",
        "transformer",
    ),
    "lr bounds reversed": ({"tune": {"lr": {"low": 0.1, "high": 0.001}}}, "tune.lr", "0.1"),
    "val fraction above 1": ({"split": {"val_fraction": 1.5}}, "split.val_fraction", "1.5"),
    "val fraction zero": ({"split": {"val_fraction": 0}}, "split.val_fraction", "0"),
    "no trials": ({"tune": {"n_trials": 0}}, "tune.n_trials", "0"),
    "unknown device": ({"device": "tpu"}, "device", "tpu"),
    "unknown dataset": ({"dataset": "imagenet"}, "dataset", "imagenet"),
    "typo'd key": ({"tune": {"n_trial": 5}}, "tune.n_trial", "5"),
    "bad model option": (
        {"models": {"mlp": {"options": {"dropout": 2.0}}}},
        "models.mlp.options.dropout",
        "2.0",
    ),
    "unknown optimizer": (
        {"models": {"lenet": {"optimizer": "adagrad"}}},
        "models.lenet.optimizer",
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
    result = run_stage_script("tune.py", "mlp", tmp_path)
    assert result.returncode != 0
    assert key in result.stderr and value in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing produced


def test_a_model_missing_from_params_is_named(tmp_path: Path) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    result = run_stage_script("train.py", "vgg", tmp_path)
    assert result.returncode != 0 and "models.vgg" in result.stderr


def test_the_shipped_params_are_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert set(params.models) >= {"mlp", "lenet", "cnn"}


def test_split_fractions_must_leave_a_train_split() -> None:
    with pytest.raises(ParamsError, match="split: val_fraction \\+ test_fraction"):
        validate_params(deep_merge(DEFAULT, {"split": {"val_fraction": 0.5, "test_fraction": 0.5}}))


def test_missing_params_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_all_arch_options_are_checked_by_default() -> None:
    bad = deep_merge(DEFAULT, {"models": {"cnn": {"options": {"width": 0}}}})
    validate_params(bad, options_of=["mlp"])  # a stage of another model is not stopped
    with pytest.raises(ParamsError, match="models.cnn.options.width"):
        validate_params(bad)


def test_reprolab_check_validates_every_model(tmp_path: Path) -> None:
    bad = deep_merge(DEFAULT, {"models": {"cnn": {"options": {"width": 0}}}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    cmd = [sys.executable, "-m", "reprolab.cli", "check"]
    env = clean_env(PYTHONPATH=str(REPO / "src"))
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "models.cnn.options.width" in result.stderr
    ok = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
