"""Faults a user or the machine causes: one line naming the thing and what to do, and nothing
already produced is lost (a real kernel file-size limit stands in for a full disk)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from reprolab.core.errors import CheckpointError, DataError
from reprolab.data.sources.imagefolder import copy_into
from reprolab.learn.checkpoints import load_model, save_model
from reprolab.models._base import ModelSpec, build_model

REPO = Path(__file__).resolve().parents[1]


def test_an_empty_class_folder_is_named_not_silently_dropped(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "cat" / "a.png")
    with pytest.raises(DataError, match=r"class folder .*dog holds no image"):
        copy_into(tmp_path / "raw", {"path": str(root), "image_size": 8})


@pytest.mark.parametrize(
    "tamper",
    [
        lambda spec: "{not json",
        lambda spec: json.dumps({k: v for k, v in spec.items() if k != "arch"}),
        lambda spec: json.dumps(spec | {"input_shape": "big"}),
    ],
    ids=["not JSON", "no arch", "wrong type"],
)
def test_a_tampered_model_json_is_one_error_naming_the_file(tmp_path: Path, tamper) -> None:
    spec = ModelSpec(
        arch="mlp", options={}, input_shape=(1, 8, 8), n_outputs=10, mean=[0.0], std=[1.0]
    )
    torch.manual_seed(0)
    save_model(build_model(spec), spec, tmp_path / "mlp", {})
    path = tmp_path / "mlp" / "model.json"
    path.write_text(tamper(json.loads(path.read_text())))
    with pytest.raises(CheckpointError, match=r"model.json: not a model spec") as err:
        load_model(tmp_path / "mlp")
    assert "\n" not in str(err.value)


FULL_DISK = """
import resource, sys
from reprolab.core.io import write_json
from reprolab.core.stage import run_stage
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
run_stage("a stage", lambda params, args: write_json("out.json", {"x": "y" * 1_000_000}))
"""


def test_a_full_disk_is_one_line_and_leaves_the_old_output_whole(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("classifiers: {mlp: {arch: mlp}}\n")
    (tmp_path / "out.json").write_text('{"x": "old"}\n')
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "File too large" in line, line
    assert (tmp_path / "out.json").read_text() == '{"x": "old"}\n'
    assert not list(tmp_path.glob(".out.json.*"))  # no temp file left behind
