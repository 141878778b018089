"""What `mlflow models serve` answers for a registered classifier or regressor, logged with
the pipeline's own functions into a real SQLite store: the class name, its index and a
probability per class name (a regressor: its target); the version is a pyfunc from code, with
nothing pickled, and `reprolab predict` still reads only its state dict."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import BIN, free_port, log_toy_version, server

from reprolab.cli import main
from reprolab.models._base import ModelSpec

CLASSES = ["cat", "dog", "emu"]
CLASSIFIER = {"task": "classification", "classes": CLASSES, "input_max": 16.0}
REGRESSOR = {
    "task": "regression",
    "classes": [],
    "input_max": 9.0,
    "features": ["a", "b", "c"],
    "output": "log1p(price)",
}


def _log(folder: Path, name: str, spec: ModelSpec, about: dict, example: np.ndarray):
    return log_toy_version(folder, name, spec, about, example, logged={"val_loss": 1.0})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    import mlflow

    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        image = ModelSpec("mlp", {"hidden": [4], "dropout": 0.0}, (1, 8, 8), 3, [4.0], [5.0])
        rows = ModelSpec("tabular_mlp", {"hidden": [4]}, (3,), 1, [1.0] * 3, [2.0] * 3, (3.0, 0.5))
        x = (np.arange(4 * 64, dtype=np.float32).reshape(4, 1, 8, 8) * 7) % 17
        classifier = _log(root / "models" / "mlp", "mlp", image, CLASSIFIER, x)
        regressor = _log(
            root / "models" / "reg", "reg", rows, REGRESSOR, np.ones((2, 3), np.float32)
        )
        yield SimpleNamespace(root=root, uri=uri, classifier=classifier, regressor=regressor)


def test_the_version_is_a_pyfunc_from_code_with_the_state_dict_and_nothing_pickled(
    store,
) -> None:
    import mlflow

    info = mlflow.models.get_model_info("models:/toy-mlp/1")
    pyfunc = info.flavors["python_function"]
    assert "model_code_path" in pyfunc, pyfunc  # MLflow runs that file; it unpickles nothing
    assert "pytorch" not in info.flavors
    local = Path(mlflow.artifacts.download_artifacts("models:/toy-mlp/1"))
    files = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert {"artifacts/model.pt", "artifacts/model.json"} <= set(files), files
    pickled = [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]
    assert not pickled, pickled
    assert info.metadata["classes"] == CLASSES


def test_mlflow_models_serve_answers_class_names_and_probabilities(store) -> None:
    port = free_port()
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/toy-mlp/1"]
    cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    # Two image rows: one as (1, 8, 8), one flat (64 values) is the same input reshaped.
    x = (np.arange(2 * 64, dtype=np.float32).reshape(2, 1, 8, 8) * 5) % 17
    url = f"http://127.0.0.1:{port}"
    with server(cmd, store.root, f"{url}/ping", timeout=120, MLFLOW_TRACKING_URI=store.uri):
        request = urllib.request.Request(
            f"{url}/invocations",
            data=json.dumps({"inputs": x.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer_rows = json.loads(response.read())["predictions"]
    with torch.no_grad():
        expected = torch.softmax(store.classifier(torch.from_numpy(x)), dim=1).numpy()
    assert len(answer_rows) == 2
    for row, probabilities in zip(answer_rows, expected, strict=True):
        assert set(row) == {"class", "class_index", *CLASSES}, row
        np.testing.assert_allclose([row[c] for c in CLASSES], probabilities, rtol=1e-5)
        assert row["class_index"] == int(probabilities.argmax())
        assert row["class"] == CLASSES[row["class_index"]]


def test_the_served_regressor_answers_its_target_for_flat_rows(store) -> None:
    import mlflow

    rows = np.array([[1.0, 2.0, 3.0], [0.0, 5.0, 9.0]], np.float32)
    served = mlflow.pyfunc.load_model("models:/toy-reg/1").predict(rows)
    assert list(served.columns) == ["price"]
    with torch.no_grad():
        expected = torch.expm1(store.regressor(torch.from_numpy(rows))).clamp(min=0).numpy()
    np.testing.assert_allclose(served["price"].to_numpy(), expected[:, 0], rtol=1e-5)


def test_reprolab_predict_reads_only_the_state_dict_of_the_pyfunc_version(
    store, tmp_path: Path, capsys
) -> None:
    """The served file is replaced by one that would write a marker: predict still answers
    from the version's model.pt + model.json and never runs it."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts("models:/toy-mlp/1", dst_path=tmp_path))
    code = next(p for p in local.glob("*.py"))
    marker = tmp_path / "ran"
    code.write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    with mlflow.start_run():  # the same files, but a loader that would run code
        mlflow.log_artifacts(str(local), "model")
        run_id = mlflow.active_run().info.run_id
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join("3" for _ in range(64)) + "\n")
    for uri in ("models:/toy-mlp/1", f"runs:/{run_id}/model"):
        try:
            main(["predict", "--model", uri, str(rows)])
        except SystemExit as end:
            pytest.fail(f"{uri}: {end.code}")
        printed = capsys.readouterr().out.splitlines()
        assert printed[1].split("\t")[1] in CLASSES, printed
    assert not marker.exists()
