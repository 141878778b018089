"""Predictions from a trained model, for `reprolab predict`.

A model is a DVC model folder (``models/cnn``: model.json + model.pt) or an MLflow model URI
(``models:/digits-cnn@champion``, ``models:/digits-cnn/3``, ``runs:/<id>/model``). Either way
the network is rebuilt from model.json's spec and its state dict is loaded weights-only: no
model file ever runs code here. A registry version carries those two files as
``extra_files/`` (reprolab.learn.checkpoints.log_final_model logs them beside the pytorch
flavour that `mlflow models serve` unpickles); predict downloads only them and refuses a
version without them (a pickled module, a pyfunc loader module: code it will not run).

Inputs are image files (PNG, JPEG, ...: decoded with a decompression-bomb limit, converted
to the model's channels, resized to its input size, 8-bit values rescaled to the model's
input range) or CSV files of rows holding the flattened raw input values (an optional first
row naming the columns), each value finite and within ``MAX_ABS_VALUE``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reprolab.core.errors import CheckpointError, PredictError, ReprolabError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# No dataset the pipeline trains on comes near it (pixels <= 255, California populations
# ~4e4); a larger value is a typo or an overflow, and gives the model non-finite outputs.
MAX_ABS_VALUE = 1e6


@dataclass
class Predictor:
    forward: Callable[[np.ndarray], np.ndarray]  # float32 N x C x H x W -> N x classes logits
    input_shape: tuple[int, ...]  # one input, without the batch axis
    classes: list[str] | None = None
    input_max: float | None = None  # the raw value of a white pixel (e.g. 16 for digits)
    task: str = "classification"
    log: bool = True  # a regressor's output is log1p of its target (else the target)
    features: list[str] | None = None  # a tabular model's column names, in order
    table: dict | None = None  # a user's table's encoding (reprolab.data.tables), replayed


def is_mlflow_uri(ref: str) -> bool:
    return "://" in ref or ref.startswith(("models:/", "runs:/"))


def load_predictor(ref: str) -> Predictor:
    """Load ``ref``: an MLflow model URI or a DVC model folder."""
    if is_mlflow_uri(ref):
        return _load_mlflow(ref)
    folder = Path(ref)
    if not folder.is_dir():
        raise PredictError(
            f"{folder}: no such model folder (a DVC model folder holds model.json and "
            "model.pt; or give an MLflow URI such as models:/digits-cnn@champion)"
        )
    if (folder / "baselines.skops").is_file():
        raise PredictError(
            f"{folder}: the scikit-learn baselines, not a network; give a network's folder "
            "(models/<name>, e.g. models/cnn)"
        )
    _check_md5(folder, str(folder), f"`dvc checkout {folder}` restores them")
    return _rebuild(folder)


def _rebuild(folder: Path, uri: str | None = None) -> Predictor:
    """The network of ``folder``'s model.json with model.pt's weights (weights_only); ``uri``:
    the registry version they were downloaded from, named in messages instead of ``folder``."""
    import torch

    from reprolab.core import registry
    from reprolab.core.paths import SPEC_FILE
    from reprolab.learn.checkpoints import learns_log1p, load_model

    spec_path, shown = folder / SPEC_FILE, uri or str(folder)
    try:
        arch = json.loads(spec_path.read_text()).get("arch") if spec_path.is_file() else None
        generative = arch is not None and registry.model_task(str(arch)) == "generative"
    except (ValueError, AttributeError, KeyError) as err:  # bad JSON, not an object, no arch
        raise PredictError(f"{shown}: model.json is not a model spec ({err})") from None
    if generative:
        raise PredictError(f"{shown}: a generator ({arch}); predict takes classifiers/regressors")
    try:
        model, info = load_model(folder, shown=uri)
    except CheckpointError as err:
        raise PredictError(str(err)) from None
    except (ReprolabError, KeyError, TypeError, ValueError, RuntimeError) as err:
        # A spec naming no known arch, missing fields or invalid options.
        raise PredictError(f"{shown}: model.json cannot rebuild a network ({err})") from None

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return Predictor(
        forward,
        tuple(info["input_shape"]),
        info.get("classes"),
        info.get("input_max"),
        info.get("task", "classification"),
        learns_log1p(info),
        info.get("features"),
        info.get("table"),
    )


def _load_mlflow(uri: str) -> Predictor:
    """Download the version's ``extra_files/`` model.json + model.pt (nothing else: no file of
    it is unpickled or imported) and rebuild the network from them."""
    from reprolab.core.paths import MODEL_FILE, SPEC_FILE
    from reprolab.tracking.logged_files import download_extra_files

    with tempfile.TemporaryDirectory(prefix="reprolab-predict-") as tmp:
        folder = Path(tmp)
        try:
            download_extra_files(uri, (SPEC_FILE, MODEL_FILE), folder)
        except CheckpointError as err:
            raise PredictError(str(err)) from None
        _check_md5(folder, uri, "register it again")
        return _rebuild(folder, uri)


def _check_md5(folder: Path, uri: str, advice: str) -> None:
    """model.json records the md5 of the weights it was saved with; they must be these (a
    missing file is named by ``_rebuild``)."""
    from reprolab.core.paths import MODEL_FILE, SPEC_FILE

    if not ((folder / SPEC_FILE).is_file() and (folder / MODEL_FILE).is_file()):
        return
    try:
        recorded = json.loads((folder / SPEC_FILE).read_text()).get("weights_md5")
    except (ValueError, AttributeError):
        raise PredictError(f"{uri}: its {SPEC_FILE} is not a model spec") from None
    actual = hashlib.md5((folder / MODEL_FILE).read_bytes()).hexdigest()
    if recorded is not None and recorded != actual:
        raise PredictError(
            f"{uri}: its {MODEL_FILE} has md5 {actual}, its {SPEC_FILE} records "
            f"{recorded}; the files do not belong together, {advice}"
        )


def read_image(path: Path, shape: tuple[int, ...], input_max: float | None) -> np.ndarray:
    """One image file as a float32 C x H x W array in the model's raw value range."""
    from PIL import Image

    from reprolab.data.sources.imagefolder import open_image

    if len(shape) != 3:
        raise PredictError(
            f"{path}: the model takes rows of {shape[0]} features, not images; give a CSV "
            "with one row per example"
        )
    channels, height, width = shape
    if channels not in (1, 3):
        raise PredictError(f"{path}: the model takes {channels} channels; images give 1 or 3")
    advice = "give a PNG or JPEG file that an image viewer opens"
    image = open_image(path, "L" if channels == 1 else "RGB", PredictError, advice)
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32)
    if input_max is not None:
        pixels = pixels * (float(input_max) / 255.0)
    return pixels.reshape(height, width, channels).transpose(2, 0, 1)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _column(j: int, features: list[str] | None) -> str:
    return f"column {j}" + (f" ({features[j - 1]})" if features and j <= len(features) else "")


def _check_header(path: Path, line: int, row: list[str], size: int, features) -> None:
    """A first row without a single number is a header if it has the model's column count
    and names (a tabular model: its features, in order); anything else stops here."""
    if len(row) != size:
        raise PredictError(
            f"{path}, row {line}: a header of {len(row)} columns, the model takes {size} values"
        )
    for j, (cell, name) in enumerate(zip(row, features or row, strict=True), 1):
        if not cell.strip() or cell.strip().lower() != str(name).strip().lower():
            expected = f"{', '.join(map(str, features))}" if features else "a name per column"
            raise PredictError(
                f"{path}, row {line}, {_column(j, features)}: {cell!r} is neither a number nor "
                f"the header's name ({expected})"
            )


def _parse_row(path: Path, line: int, row: list[str], shape, features) -> np.ndarray:
    size = math.prod(shape)
    if len(row) != size:
        raise PredictError(
            f"{path}, row {line}: {len(row)} values, the model takes {size} "
            f"(input shape {'x'.join(map(str, shape))})"
        )
    values = np.empty(size, dtype=np.float32)
    for j, cell in enumerate(row, 1):
        where = f"{path}, row {line}, {_column(j, features)}"
        try:
            value = float(cell)
        except ValueError:
            raise PredictError(f"{where}: {cell!r} is not a number") from None
        if not math.isfinite(value) or abs(value) > MAX_ABS_VALUE:
            raise PredictError(
                f"{where}: {cell.strip()!r} is not a finite value within ±{MAX_ABS_VALUE:g}"
            )
        values[j - 1] = value
    return values.reshape(shape)


def read_csv_rows(
    path: Path, shape: tuple[int, ...], features: list[str] | None = None
) -> list[tuple[str, np.ndarray]]:
    """Rows of flattened raw inputs. The first row is a header only if none of its cells is a
    number and it matches the model's columns (``features``, recorded in model.json for a
    tabular model); every other cell must be a finite number within ``MAX_ABS_VALUE``."""
    out = []
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise PredictError(f"{path}: cannot read as CSV ({err})") from None
    first = True
    for line, row in enumerate(rows, 1):
        if not row:
            continue
        if first and not any(_is_number(cell) for cell in row):
            _check_header(path, line, row, math.prod(shape), features)
            first = False
            continue
        first = False
        out.append((f"{path}:{line}", _parse_row(path, line, row, shape, features)))
    if not out:
        raise PredictError(f"{path}: no data rows")
    return out


def read_inputs(files: Iterable[str], predictor: Predictor) -> list[tuple[str, np.ndarray]]:
    items: list[tuple[str, np.ndarray]] = []
    for name in files:
        path = Path(name)
        if path.is_dir():
            raise PredictError(f"{path}: a folder; give its image or CSV files (e.g. {path}/*)")
        if not path.is_file():
            raise PredictError(f"{path}: no such input file")
        if predictor.table is not None and path.suffix.lower() in (".csv", ".parquet"):
            from reprolab.data.tables import encode_file  # its TableError names the row

            items += encode_file(path, predictor.table)
        elif path.suffix.lower() == ".csv":
            items += read_csv_rows(path, predictor.input_shape, predictor.features)
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
    the predicted target, expm1 of its log1p output or the output itself, no probability)."""
    items = read_inputs(files, predictor)
    batch = np.stack([x for _, x in items]).astype(np.float32)
    logits = np.asarray(predictor.forward(batch), dtype=np.float64)
    finite = np.isfinite(logits.reshape(len(items), -1)).all(axis=1)
    if not finite.all():
        source = items[int(np.argmin(finite))][0]
        raise PredictError(f"{source}: the model's output is not finite for this input")
    if predictor.task == "regression":
        from reprolab.learn.metrics import predicted_targets

        values = predicted_targets(logits[:, 0], predictor.log)
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
