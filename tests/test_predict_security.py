"""`reprolab predict` never runs code shipped in a model registry version: real malicious
versions in a real MLflow store (a pickled module whose unpickling writes a marker, a pyfunc
whose loader module writes one on import) are refused with one line, the marker never appears;
a version logged the pipeline's way (state dict + model.json as the artifacts of a pyfunc from
code) predicts.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import log_toy_version

from reprolab.cli import main
from reprolab.learn.checkpoints import save_model
from reprolab.models._base import ModelSpec, build_model

ABOUT = {"task": "classification", "classes": ["a", "b", "c"], "input_max": 16.0}


class _WritesMarker(torch.nn.Module):
    """Pickled (torch.save of the module), its unpickling would write ``marker``."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


class _Payload:
    """Inside a state dict: unpickling it would write ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _signature():
    from mlflow.models import infer_signature

    return infer_signature(np.zeros((1, 1, 8, 8), np.float32), np.zeros((1, 3), np.float32))


def _log_pickled_module(marker: Path) -> None:
    import mlflow

    with mlflow.start_run():
        mlflow.pytorch.log_model(
            _WritesMarker(marker),
            name="model",
            serialization_format="pickle",
            signature=_signature(),
            pip_requirements=["torch"],
            registered_model_name="evil-pickle",
        )


def _log_loader_module(marker: Path, folder: Path) -> None:
    import mlflow

    folder.mkdir()
    code = folder / "evil_loader.py"
    code.write_text(
        f"open({str(marker)!r}, 'w').write('pwned')\n\n\ndef _load_pyfunc(path):\n    return None\n"
    )
    (folder / "weights.bin").write_bytes(b"\0" * 8)
    with mlflow.start_run():
        mlflow.pyfunc.log_model(
            name="model",
            loader_module="evil_loader",
            data_path=str(folder / "weights.bin"),
            code_paths=[str(code)],
            signature=_signature(),
            pip_requirements=["numpy"],
            registered_model_name="evil-loader",
        )


def _log_pickled_weights(marker: Path, folder: Path) -> None:
    """The pipeline's layout, but its model.pt a pickle with a payload (md5 updated)."""
    import hashlib
    import json

    import mlflow

    spec = ModelSpec("mlp", {"hidden": [4]}, (1, 8, 8), 3, [0.0], [1.0])
    model = build_model(spec).eval()
    save_model(model, spec, folder, ABOUT)
    torch.save({**model.state_dict(), "payload": _Payload(marker)}, folder / "model.pt")
    info = json.loads((folder / "model.json").read_text())
    info["weights_md5"] = hashlib.md5((folder / "model.pt").read_bytes()).hexdigest()
    (folder / "model.json").write_text(json.dumps(info))
    with mlflow.start_run():
        mlflow.pytorch.log_model(
            model,
            name="model",
            serialization_format="pickle",
            signature=_signature(),
            pip_requirements=["torch"],
            registered_model_name="evil-weights",
            extra_files=[str(folder / "model.pt"), str(folder / "model.json")],
        )


def _log_genuine(folder: Path) -> torch.nn.Module:
    """A tiny classifier saved and logged with the pipeline's own functions."""
    spec = ModelSpec("mlp", {"hidden": [4], "dropout": 0.0}, (1, 8, 8), 3, [4.0], [5.0])
    example = np.arange(2 * 64, dtype=np.float32).reshape(2, 1, 8, 8) % 17
    return log_toy_version(folder, "mlp", spec, ABOUT, example, logged={"val_accuracy": 1.0})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """One SQLite store holding the malicious versions and a genuine one."""
    import mlflow

    root = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        markers = {m: root / f"{m}-ran" for m in ("pickle", "loader", "weights")}
        _log_pickled_module(markers["pickle"])
        _log_loader_module(markers["loader"], root / "loader")
        _log_pickled_weights(markers["weights"], root / "weights")
        model = _log_genuine(root / "models" / "mlp")
        with mlflow.start_run():  # a GAN's version: its metadata says so, no extra_files
            mlflow.pytorch.log_model(
                torch.nn.Linear(2, 4),
                name="model",
                input_example=np.zeros((1, 2), np.float32),
                registered_model_name="toy-dcgan",
                pip_requirements=["torch"],
                metadata={"task": "generative", "latent": 2},
            )
        assert not any(m.exists() for m in markers.values()), "logging ran the payload"
        yield SimpleNamespace(root=root, markers=markers, model=model)


def _png(path: Path) -> Path:
    from PIL import Image

    pixels = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _predict(capsys, *args: str) -> tuple[int | str, str]:
    """`reprolab predict ...` in this process: (exit code or message, stdout)."""
    try:
        main(["predict", *args])
    except SystemExit as end:
        return end.code, capsys.readouterr().out
    return 0, capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "marker", "says"),
    [
        ("evil-pickle", "pickle", "carries no state dict"),
        ("evil-loader", "loader", "carries no state dict"),
        ("evil-weights", "weights", "cannot load model.pt (it holds pickled objects"),
    ],
)
def test_predict_refuses_a_version_that_would_run_code(
    store, name: str, marker: str, says: str, tmp_path: Path, capsys
) -> None:
    uri = f"models:/{name}/1"
    code, out = _predict(capsys, "--model", uri, str(_png(tmp_path / "x.png")))
    assert isinstance(code, str) and code.startswith(f"error: {uri}: "), (code, out)
    assert "\n" not in code and says in code and "reprolab-predict-" not in code, code
    assert not store.markers[marker].exists(), f"{name}: predict ran the model's code"


def test_a_version_logged_the_pipelines_way_predicts_like_its_folder(
    store, tmp_path: Path, capsys
) -> None:
    image = str(_png(tmp_path / "x.png"))
    folder = str(store.root / "models" / "mlp")
    import mlflow

    client = mlflow.MlflowClient()
    client.set_registered_model_alias("toy-mlp", "champion", "1")
    run_id = client.get_model_version("toy-mlp", "1").run_id
    answers = set()
    for uri in ("models:/toy-mlp/1", "models:/toy-mlp@champion", f"runs:/{run_id}/model"):
        code, registry = _predict(capsys, "--model", uri, image)
        assert code == 0, (uri, code)
        answers.add(registry)
    assert len(answers) == 1, answers
    code, local = _predict(capsys, "--model", folder, image)
    assert code == 0, code
    assert registry == local and registry.splitlines()[1].split("\t")[1] in ABOUT["classes"]
    with torch.no_grad():
        x = torch.from_numpy((np.arange(64).reshape(1, 1, 8, 8) * 4).astype(np.float32))
        expected = ABOUT["classes"][int(store.model(x * 16 / 255).argmax())]
    assert registry.splitlines()[1].split("\t")[1] == expected


def test_a_generators_version_is_named_as_such(store, tmp_path: Path, capsys) -> None:
    """Not "carries no state dict ... register it again", which retraining cannot fix."""
    code, _ = _predict(capsys, "--model", "models:/toy-dcgan/1", str(_png(tmp_path / "x.png")))
    assert (
        code == "error: models:/toy-dcgan/1: a generator; predict takes classifiers and regressors"
    )
