"""Faults a user or the machine causes: one line naming the thing and what to do, and nothing
already produced is lost (a real kernel file-size limit stands in for a full disk)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
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


@pytest.mark.parametrize(
    "content, said",
    [
        (None, "not found; run `dvc repro tune@mlp`"),
        ('{"lr": 0.01, "weight', "not valid JSON"),
        ("[0.01, 0.001]", "not an object with lr, weight_decay"),
        ('{"lr": 0.01}', "not an object with lr, weight_decay"),
    ],
    ids=["missing", "truncated", "a list", "a key short"],
)
def test_a_bad_input_written_by_another_stage_is_one_line(
    tmp_path: Path, content: str | None, said: str
) -> None:
    """best_params.json as train reads it (meta.json and the scorer's model.json go through
    the same reader): the file, what is wrong and the stage that writes it."""
    from reprolab.learn.checkpoints import read_best_params

    folder = tmp_path / "mlp"
    folder.mkdir()
    if content is not None:
        (folder / "best_params.json").write_text(content)
    with pytest.raises(CheckpointError, match="best_params.json: " + said) as err:
        read_best_params(folder)
    assert "\n" not in str(err.value) and "tune@mlp" in str(err.value)


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


READ_ONLY_STORE = """
import os
from reprolab.core.stage import run_stage

def body(params, args):
    if os.environ["STORE"] == "mlflow":
        from reprolab.tracking.runs import Tracker
        tracker = Tracker("digits", "mlp", "study")
        tracker.log(tracker.parent_run_id({}), metrics={"written": 1.0})
    else:
        import optuna
        from reprolab.tuning.storage import open_storage
        from reprolab.tracking.runs import Tracker
        storage = open_storage(os.environ["URL"], Tracker("digits", "mlp", "s"))
        optuna.create_study(study_name="s", storage=storage)

run_stage("a stage", body)
"""


@pytest.fixture
def read_only(tmp_path: Path):
    """Seals a folder or a file by a real read-only bind mount (root with mount rights; a
    chmod does not stop root)."""
    folder = tmp_path / "stores"
    folder.mkdir()
    sealed: list[Path] = []

    def mount(*args: str) -> bool:
        return subprocess.run(["mount", *args], capture_output=True).returncode == 0

    def seal(target: Path) -> None:
        if not (
            mount("--bind", str(target), str(target))
            and mount("-o", "remount,bind,ro", str(target))
        ):
            pytest.skip("a read-only bind mount needs root with mount rights")
        sealed.append(target)

    yield folder, seal
    for target in sealed:
        # Lazy: the test process may still hold the database open (its engine).
        subprocess.run(["umount", "--lazy", str(target)], capture_output=True)


@pytest.mark.parametrize("sealed", ["folder", "database file"])
@pytest.mark.parametrize("store", ["mlflow", "optuna"])
def test_a_read_only_store_is_one_line_naming_what_to_fix(
    store: str, sealed: str, read_only, tmp_path: Path
) -> None:
    """The store's folder read-only, or only its database file (in a writable folder)."""
    folder, seal = read_only
    (tmp_path / "params.yaml").write_text("classifiers: {mlp: {arch: mlp}}\n")
    (tmp_path / ".dvc").mkdir()
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    url = f"sqlite:///{folder / 'studies.db'}"
    env |= {"STORE": store, "URL": url}
    script = [sys.executable, "-c", READ_ONLY_STORE]
    # First a writable run creates both stores, then the folder is sealed.
    if store == "mlflow":
        first = subprocess.run(script, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert first.returncode == 0, first.stderr[-2000:]
    else:
        import optuna

        optuna.create_study(study_name="other", storage=url)
    database = folder / ("mlflow.db" if store == "mlflow" else "studies.db")
    seal(folder if sealed == "folder" else database)
    result = subprocess.run(script, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    if sealed == "folder":
        assert last.startswith(f"error: {folder}/") and "Read-only file system" in last, last
    else:  # SQLite opens the file read-only; its first write is refused
        assert last.startswith("error: ") and "readonly database" in last, last
        assert ("MLflow" if store == "mlflow" else "Optuna") in last, last


def test_an_unreachable_study_server_is_one_line_naming_what_to_fix(tmp_path: Path) -> None:
    """Nothing listens on port 1: the database driver's error, in one line."""
    (tmp_path / "params.yaml").write_text("classifiers: {mlp: {arch: mlp}}\n")
    (tmp_path / ".dvc").mkdir()
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "STORE": "optuna"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env["URL"] = "postgresql+psycopg2://nobody@127.0.0.1:1/optuna"
    result = subprocess.run(
        [sys.executable, "-c", READ_ONLY_STORE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: OperationalError: ") and "Optuna storage" in last, last


def test_a_huge_csv_field_is_one_line(tmp_path: Path) -> None:
    from reprolab.core.errors import PredictError
    from reprolab.predict import read_csv_rows

    path = tmp_path / "rows.csv"
    path.write_text("1," + "9" * 200_000 + "\n")
    with pytest.raises(PredictError) as err:
        read_csv_rows(path, (2,))
    assert "\n" not in str(err.value) and "rows.csv" in str(err.value)


def test_a_published_train_class_of_one_image_is_one_line() -> None:
    """imagefolder's train/ + val/ layout, a train/ class with one image: sklearn's ValueError
    from the stratified train/val split was a traceback."""
    from reprolab.data.split import split_indices

    y = np.array([0] * 10 + [1] + [0] * 3 + [1] * 3)
    published_test = np.arange(len(y)) >= 11
    with pytest.raises(DataError, match=r"rarest class \(label 1\) has 1 sample"):
        split_indices(y, 0.2, 0.2, seed=0, test_mask=published_test)
    y[9] = 1  # two images of class 1 in train/: splits
    assert len(split_indices(y, 0.2, 0.2, seed=0, test_mask=published_test)["val"]) == 3


@pytest.mark.parametrize("keep", [0, 100, 0.5])
def test_a_truncated_split_file_is_one_line_saying_to_rerun_the_split(
    tmp_path: Path, keep: float
) -> None:
    from reprolab.learn.tensors import load_split

    path = tmp_path / "image" / "train.npz"
    path.parent.mkdir()
    np.savez(path, x=np.zeros((200, 3, 8, 8), np.uint8), y=np.zeros(200, np.int64))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(DataError, match=r"train.npz: unreadable .*rerun `dvc repro split@image`"):
        load_split(path, torch.device("cpu"))


@pytest.mark.parametrize("layout", ["val class not in train", "no class folder"])
def test_an_imagefolder_fault_names_the_users_folder_not_a_temp_copy(
    tmp_path: Path, layout: str
) -> None:
    from reprolab.data.fetch import fetch_dataset

    root = tmp_path / "tree"
    if layout == "no class folder":
        root.mkdir()
        Image.new("RGB", (4, 4)).save(root / "a.png")
        expected = f"{root} holds no class folder"
    else:
        for split, name in [("train", "cat"), ("train", "dog"), ("val", "cat"), ("val", "bird")]:
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(root / split / name / "a.png")
        expected = f"{root / 'val'}: its classes differ from {root / 'train'}'s (in one only: bird,"
    with pytest.raises(DataError) as err:
        options = {"path": str(root), "image_size": 8}
        fetch_dataset("imagefolder", tmp_path / "data/raw/imagefolder", options=options)
    assert expected in str(err.value) and ".imagefolder." not in str(err.value), str(err.value)
