"""Predictions from a trained model, for `reprolab predict`.

A model is a DVC model folder (``models/cnn``: model.json + model.pt) or an MLflow model URI
(``models:/digits-cnn@champion``, ``models:/digits-cnn/3``, ``runs:/<id>/model``), loaded
with its pytorch flavour or as a generic pyfunc. Inputs are image files (PNG, JPEG, ...:
converted to the model's channels, resized to its input size, 8-bit values rescaled to the
model's input range) or CSV files of rows holding the flattened raw input values.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reprolab.core.errors import PredictError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class Predictor:
    forward: Callable[[np.ndarray], np.ndarray]  # float32 N x C x H x W -> N x classes logits
    input_shape: tuple[int, ...]  # one input, without the batch axis
    classes: list[str] | None = None
    input_max: float | None = None  # the raw value of a white pixel (e.g. 16 for digits)
    task: str = "classification"  # regression: the output is log1p of the target


def is_mlflow_uri(ref: str) -> bool:
    return "://" in ref or ref.startswith(("models:/", "runs:/"))


def load_predictor(ref: str, flavor: str = "auto") -> Predictor:
    """Load ``ref``: an MLflow model URI or a DVC model folder."""
    if is_mlflow_uri(ref):
        return _load_mlflow(ref, flavor)
    return _load_folder(Path(ref))


def _load_folder(folder: Path) -> Predictor:
    import torch

    from reprolab.core.errors import CheckpointError
    from reprolab.learn.checkpoints import load_model

    if not folder.is_dir():
        raise PredictError(
            f"{folder}: no such model folder (a DVC model folder holds model.json and "
            "model.pt; or give an MLflow URI such as models:/digits-cnn@champion)"
        )
    try:
        model, info = load_model(folder)
    except CheckpointError as err:
        raise PredictError(str(err)) from None

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    shape = tuple(info["input_shape"])
    return Predictor(
        forward,
        shape,
        info.get("classes"),
        info.get("input_max"),
        info.get("task", "classification"),
    )


def _load_mlflow(uri: str, flavor: str) -> Predictor:
    import mlflow

    from reprolab.tracking.runs import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    try:
        info = mlflow.models.get_model_info(uri)
    except Exception as err:  # MlflowException, OSError: unknown name, alias or path
        raise PredictError(f"{uri}: cannot find this MLflow model ({err})") from None
    if info.signature is None or not info.signature.inputs.inputs:
        raise PredictError(f"{uri}: the model has no input signature; cannot shape inputs")
    shape = tuple(int(d) for d in info.signature.inputs.inputs[0].shape[1:])
    metadata = info.metadata or {}
    if flavor == "auto":
        flavor = "pytorch" if "pytorch" in info.flavors else "pyfunc"
    if flavor == "pytorch":
        import torch

        model = mlflow.pytorch.load_model(uri, map_location="cpu")
        # MLflow 3 logs a torch.export graph, already in eval mode (and refusing .eval()).
        if not isinstance(model, torch.fx.GraphModule):
            model.eval()

        def forward(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(torch.from_numpy(x)).numpy()

    else:
        pyfunc = mlflow.pyfunc.load_model(uri)

        def forward(x: np.ndarray) -> np.ndarray:
            return np.asarray(pyfunc.predict(x))

    return Predictor(
        forward,
        shape,
        metadata.get("classes"),
        metadata.get("input_max"),
        metadata.get("task", "classification"),
    )


def read_image(path: Path, shape: tuple[int, ...], input_max: float | None) -> np.ndarray:
    """One image file as a float32 C x H x W array in the model's raw value range."""
    from PIL import Image, UnidentifiedImageError

    channels, height, width = shape
    if channels not in (1, 3):
        raise PredictError(f"{path}: the model takes {channels} channels; images give 1 or 3")
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32)
    except (UnidentifiedImageError, OSError) as err:
        raise PredictError(f"{path}: cannot read as an image ({err})") from None
    if input_max is not None:
        pixels = pixels * (float(input_max) / 255.0)
    return pixels.reshape(height, width, channels).transpose(2, 0, 1)


def read_csv_rows(path: Path, shape: tuple[int, ...]) -> list[tuple[str, np.ndarray]]:
    """Rows of flattened raw inputs (a non-numeric first row is taken as a header)."""
    size = math.prod(shape)
    out = []
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as err:
        raise PredictError(f"{path}: cannot read as CSV ({err})") from None
    for line, row in enumerate(rows, 1):
        if not row:
            continue
        try:
            values = np.array([float(v) for v in row], dtype=np.float32)
        except ValueError:
            if line == 1:
                continue  # header
            raise PredictError(f"{path}:{line}: non-numeric value in {row[:5]}...") from None
        if values.size != size:
            raise PredictError(
                f"{path}:{line}: {values.size} values, the model takes {size} "
                f"(input shape {'x'.join(map(str, shape))})"
            )
        out.append((f"{path}:{line}", values.reshape(shape)))
    if not out:
        raise PredictError(f"{path}: no data rows")
    return out


def read_inputs(files: Iterable[str], predictor: Predictor) -> list[tuple[str, np.ndarray]]:
    items: list[tuple[str, np.ndarray]] = []
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise PredictError(f"{path}: no such input file")
        if path.suffix.lower() == ".csv":
            items += read_csv_rows(path, predictor.input_shape)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            image = read_image(path, predictor.input_shape, predictor.input_max)
            items.append((str(path), image))
        else:
            raise PredictError(
                f"{path}: unsupported input type {path.suffix or '(none)'!r}; "
                f"expected .csv or an image ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
    return items


def predict_files(predictor: Predictor, files: Iterable[str]) -> list[dict]:
    """One record per input: source, predicted class and its probability (a regressor:
    the predicted target, expm1 of its log1p output, and no probability)."""
    items = read_inputs(files, predictor)
    batch = np.stack([x for _, x in items]).astype(np.float32)
    logits = np.asarray(predictor.forward(batch), dtype=np.float64)
    if predictor.task == "regression":
        values = np.clip(np.expm1(logits[:, 0]), 0.0, None)
        return [
            {"input": source, "prediction": f"{v:.6g}", "probability": math.nan}
            for (source, _), v in zip(items, values, strict=True)
        ]
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    records = []
    for (source, _), p in zip(items, probabilities, strict=True):
        index = int(p.argmax())
        label = predictor.classes[index] if predictor.classes else str(index)
        records.append({"input": source, "prediction": label, "probability": float(p[index])})
    return records
