"""Sharing and using versioned models: DVC remote round trip, the registry's champion alias,
`reprolab predict` and `mlflow models serve`, on the shared TINY pipeline run."""

from __future__ import annotations

import hashlib
import json
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, copy_repo, free_port, md5s, run, server, stages_run

pytestmark = pytest.mark.slow

SHARED = ["models/*/model.pt", "models/*/model.json", "metrics/*/*.json", "reports/figures/*"]


def _store(repo: Path) -> str:
    return f"sqlite:///{repo / 'mlflow.db'}"


def _best_by_validation(repo: Path) -> str:
    scores = {}
    for path in sorted((repo / "metrics").glob("*/train.json")):
        val = json.loads(path.read_text())["val"]
        if "accuracy" in val:  # the classifiers' champion
            scores[path.parent.name] = (-val["accuracy"], val["loss"], path.parent.name)
    return min(scores, key=scores.get)


def _write_inputs(repo: Path, folder: Path, n: int = 3) -> tuple[list[Path], Path, np.ndarray]:
    """n test images as 32x32 PNGs (8-bit, as a scanner gives them) and as one CSV."""
    from PIL import Image

    with np.load(repo / "data/splits/image/test.npz") as data:
        x, y = data["x"][:n], data["y"][:n]
    images = []
    for i in range(n):
        pixels = (x[i, 0].astype(np.float64) * 255 / 16).round().astype(np.uint8)
        path = folder / f"digit{i}.png"
        Image.fromarray(pixels).resize((32, 32), Image.Resampling.NEAREST).save(path)
        images.append(path)
    rows = folder / "rows.csv"
    np.savetxt(rows, x.reshape(n, -1), delimiter=",", fmt="%d")
    return images, rows, y


def _predict(repo: Path, *args: str, check: bool = True):
    return run(
        [sys.executable, "-m", "reprolab.cli", "predict", *args],
        repo,
        check=check,
        PYTHONPATH="src",
        MLFLOW_TRACKING_URI=_store(repo),
    )


def _table(stdout: str) -> list[list[str]]:
    return [line.split("\t") for line in stdout.strip().splitlines()[1:]]


def test_push_then_pull_in_a_fresh_clone_reproduces_nothing(
    tiny_pipeline: dict, tmp_path: Path
) -> None:
    # It commits and pushes: on its own copy, so the shared run stays as every test found it.
    repo = copy_repo(tiny_pipeline["repo"], tmp_path / "repo")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "pipeline run", "--allow-empty"], repo)
    run(["dvc", "push"], repo)
    # The default remote is a folder beside the repo (.dvc/config), shared by its clones.
    assert any((repo.parent / "reprolab-dvc-remote").rglob("*")), "nothing pushed"
    clone = repo.parent / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], repo.parent)
    assert not (clone / "models/mlp/model.pt").exists()
    run(["dvc", "pull"], clone)
    result = run(["dvc", "repro"], clone)
    assert stages_run(result.stdout) == [], result.stdout
    assert md5s(clone, SHARED) == md5s(repo, SHARED)
    assert "up to date" in run(["dvc", "status"], clone).stdout
    assert not any(tiny_pipeline["repo"].parent.glob("reprolab-dvc-remote"))  # the copy's own


def test_report_aliases_the_best_model_by_validation_as_champion(tiny_pipeline: dict) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    repo = tiny_pipeline["repo"]
    mlflow.set_tracking_uri(_store(repo))
    client = MlflowClient()
    best = _best_by_validation(repo)
    champion = client.get_model_version_by_alias(f"digits-{best}", "champion")
    weights = hashlib.md5((repo / f"models/{best}/model.pt").read_bytes()).hexdigest()
    assert champion.tags["weights_md5"] == weights
    assert {"git_sha", "data_md5", "params_hash"} <= set(champion.tags)
    for other in {"mlp", "lenet"} - {best}:
        assert "champion" not in client.get_registered_model(f"digits-{other}").aliases
    assert f"models:/digits-{best}@champion" in (repo / "reports/summary.md").read_text()
    # Wall-clock training time: in MLflow, never in the DVC-tracked metrics.
    parent = client.get_run(champion.run_id)
    assert parent.data.metrics["train_seconds"] > 0
    assert "seconds" not in (repo / f"metrics/{best}/train.json").read_text()


def test_predict_images_and_csv_from_registry_and_dvc_folder(
    tiny_pipeline: dict, tmp_path: Path
) -> None:
    repo = tiny_pipeline["repo"]
    best = _best_by_validation(repo)
    images, rows, labels = _write_inputs(repo, tmp_path)
    files = [str(p) for p in images] + [str(rows)]
    outputs = {}
    for ref in (f"models:/digits-{best}@champion", f"models/{best}"):
        table = _table(_predict(repo, "--model", ref, *files).stdout)
        assert len(table) == 2 * len(labels), table
        outputs[ref] = [row[1] for row in table]
        for row in table:
            assert row[1] in {str(c) for c in range(10)} and 0 < float(row[2]) <= 1
    # The registry version (its logged state dict) and the DVC folder: the same answers.
    assert len(set(map(tuple, outputs.values()))) == 1, outputs
    predicted = next(iter(outputs.values()))
    # An 8-bit PNG is rescaled to the digits' 0..16 range: the image and its CSV row agree.
    assert predicted[: len(labels)] == predicted[len(labels) :]


def test_predict_names_a_missing_model_or_an_unreadable_file(
    tiny_pipeline: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One `error:` line naming the bad value, no traceback: the registry case through the
    real command; the folder and file cases through its `main`, in this process."""
    from reprolab.cli import main

    repo = tiny_pipeline["repo"]
    images, _, _ = _write_inputs(repo, tmp_path, n=1)
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    result = _predict(
        repo, "--model", "models:/digits-nosuch@champion", str(images[0]), check=False
    )
    assert result.returncode == 1 and "error:" in result.stderr, result.stderr
    assert "digits-nosuch" in result.stderr and "Traceback" not in result.stderr
    cases = [
        (["--model", "models/nosuch", str(images[0])], "models/nosuch"),
        (["--model", "models/mlp", str(bad)], "broken.png"),
        (["--model", "models/mlp", str(tmp_path / "missing.png")], "missing.png"),
        (["--model", "models/mlp", str(repo / "params.yaml")], "unsupported input type"),
    ]
    monkeypatch.chdir(repo)
    for args, named in cases:
        with pytest.raises(SystemExit) as exited:  # what the interpreter prints, then exit 1
            main(["predict", *args])
        message = str(exited.value.code)
        assert message.startswith("error:") and named in message, message
        assert "\n" not in message


def test_predict_from_another_folder_never_creates_a_tracking_store(
    tiny_pipeline: dict, tmp_path: Path
) -> None:
    """A registry address outside the workspace: with no MLFLOW_TRACKING_URI, an error that
    says how to point at the store, and no mlflow.db left behind; with it, the prediction."""
    repo = tiny_pipeline["repo"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    images, _, _ = _write_inputs(repo, elsewhere, n=1)
    predict = [sys.executable, "-m", "reprolab.cli", "predict", "--model"]
    predict += ["models:/digits-mlp@champion", str(images[0])]
    lost = run(predict, elsewhere, check=False, PYTHONPATH=str(repo / "src"))
    assert lost.returncode == 1 and "MLFLOW_TRACKING_URI" in lost.stderr, lost.stderr
    assert "Traceback" not in lost.stderr
    explicit = run(
        predict, elsewhere, PYTHONPATH=str(repo / "src"), MLFLOW_TRACKING_URI=_store(repo)
    )
    assert _table(explicit.stdout)[0][0] == str(images[0])
    assert sorted(p.name for p in elsewhere.iterdir()) == ["digit0.png", "rows.csv"]


def test_mlflow_models_serve_answers_a_rest_request(tiny_pipeline: dict) -> None:
    import mlflow

    repo = tiny_pipeline["repo"]
    port = free_port()
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/digits-mlp/1"]
    cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    with np.load(repo / "data/splits/image/val.npz") as data:
        x = data["x"][:4].astype("float32")
    mlflow.set_tracking_uri(_store(repo))
    expected = mlflow.pyfunc.load_model("models:/digits-mlp/1").predict(x)
    url = f"http://127.0.0.1:{port}"
    with server(cmd, repo, f"{url}/ping", timeout=180, MLFLOW_TRACKING_URI=_store(repo)):
        request = urllib.request.Request(
            f"{url}/invocations",
            data=json.dumps({"inputs": x.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    rows = answer["predictions"]  # one record per input: class, class_index, probabilities
    classes = [str(c) for c in range(10)]
    assert mlflow.models.get_model_info("models:/digits-mlp/1").metadata["classes"] == classes
    assert [set(row) for row in rows] == [{"class", "class_index", *classes}] * 4
    probabilities = np.asarray([[row[c] for c in classes] for row in rows])
    np.testing.assert_allclose(probabilities, expected[classes].to_numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert [row["class_index"] for row in rows] == probabilities.argmax(axis=1).tolist()
    assert [row["class"] for row in rows] == [classes[r["class_index"]] for r in rows]


def test_served_regressor_takes_a_flat_row_and_answers_the_target(
    tiny_pipeline: dict, tmp_path: Path
) -> None:
    """The served tabular model (the pyfunc `mlflow models serve` runs) takes a flat row of
    raw features and answers the target in its units, as `reprolab predict` prints it."""
    import mlflow

    repo = tiny_pipeline["repo"]
    with np.load(repo / "data/splits/tabular/val.npz") as data:
        rows = data["x"][:3].astype("float32")
    rows_csv = tmp_path / "rows.csv"
    rows_csv.write_text("\n".join(",".join(f"{v:.9g}" for v in row) for row in rows) + "\n")
    mlflow.set_tracking_uri(_store(repo))
    served = mlflow.pyfunc.load_model("models:/diabetes-tabular_mlp/1").predict(rows)
    printed = _table(_predict(repo, "--model", "models/tabular_mlp", str(rows_csv)).stdout)
    assert np.asarray(served).shape == (3, 1)
    np.testing.assert_allclose(np.asarray(served)[:, 0], [float(r[1]) for r in printed], rtol=1e-4)
