"""Presets merge into params.yaml, keep its comments, and are validated."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from reprolab.core.errors import ParamsError
from reprolab.core.params import load_params
from reprolab.core.presets import apply_preset, preset_names


@pytest.fixture
def params_copy(tmp_path: Path) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path / "params.yaml"


@pytest.mark.parametrize("name", preset_names(REPO / "presets"))
def test_every_shipped_preset_applies_and_validates(name: str, params_copy: Path) -> None:
    merged = apply_preset(name, params_copy, REPO / "presets")
    preset = yaml.safe_load((REPO / "presets" / f"{name}.yaml").read_text())
    assert merged["datasets"]["image"] == preset["datasets"]["image"]
    assert (
        merged["datasets"]["tabular"]
        == yaml.safe_load((REPO / "params.yaml").read_text())["datasets"]["tabular"]
    )  # merged key by key
    for group in ("classifiers", "regressors", "generators"):
        if group in preset:  # replaced whole
            assert list(merged[group]) == list(preset[group])
    assert merged["seed"] == yaml.safe_load((REPO / "params.yaml").read_text())["seed"]
    assert "# drives python/numpy/torch" in params_copy.read_text()  # comments kept
    load_params(params_copy)


def test_a_bad_preset_leaves_params_untouched(params_copy: Path, tmp_path: Path) -> None:
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "bad.yaml").write_text("tune: {n_trials: 0}\n")
    before = params_copy.read_text()
    with pytest.raises(ParamsError, match="tune.n_trials"):
        apply_preset("bad", params_copy, tmp_path / "presets")
    assert params_copy.read_text() == before
    with pytest.raises(ParamsError, match="preset 'nope' not found"):
        apply_preset("nope", params_copy, tmp_path / "presets")
    # A name, never a path: a params file elsewhere is not a preset.
    (tmp_path / "elsewhere.yaml").write_text("seed: 7\n")
    with pytest.raises(ParamsError, match=r"preset '\.\./elsewhere' not found"):
        apply_preset("../elsewhere", params_copy, tmp_path / "presets")
    assert params_copy.read_text() == before


def test_a_preset_changes_only_the_lines_it_sets(params_copy: Path, tmp_path: Path) -> None:
    """`null` stays `null` and no line is rewrapped: the diff is the preset's keys alone."""
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "seed.yaml").write_text("seed: 7\n")
    before = params_copy.read_text().splitlines()
    apply_preset("seed", params_copy, tmp_path / "presets")
    after = params_copy.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert [b.split("#")[0].strip() for _, b in changed] == ["seed: 7"]
