"""Classical scikit-learn baselines, so every neural model is ranked beside a classical one.

For images: logistic regression and an RBF SVM on standardised, flattened pixels; for
feature rows: ridge regression on log1p targets (the regressors' RMSLE objective), or on the
targets themselves where the regressors learn them on a linear scale (RMSE). Each
estimator's regularisation strength is picked on the validation split from a small fixed
grid (fitted on train only, like the neural models); ``evaluate_baselines`` scores the chosen
estimators once on test. They are saved with skops (scikit-learn's recommended secure
format: loading checks every type against an allow-list, no arbitrary pickle code).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reprolab.core.errors import CheckpointError, StageError
from reprolab.core.io import atomic_path, read_json, write_json
from reprolab.core.npz import row_chunks
from reprolab.learn.objectives import OBJECTIVES

# name -> (task, hyperparameter, grid)
GRIDS: dict[str, tuple[str, str, list[float]]] = {
    "logistic_regression": ("classification", "C", [0.01, 0.1, 1.0, 10.0]),
    "rbf_svm": ("classification", "C", [0.3, 1.0, 3.0, 10.0, 30.0]),
    "ridge": ("regression", "alpha", [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]),
}
FILE = "baselines.skops"
# The types make_estimator's estimators hold that skops does not trust by default (the
# calibrated SVM's parts); tests/test_baselines.py checks this is exactly what they need.
TRUSTED_TYPES = frozenset(
    {"sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration"}
)


def of_task(names: list[str], task: str, key: str) -> list[str]:
    """The baselines of ``names`` that learn ``task`` (a table's task is known only after its
    split, so ``baselines.tabular`` may list both kinds); none is an error naming ``key``."""
    kept = [n for n in names if GRIDS[n][0] == task]
    if not kept:
        fits = ", ".join(n for n, (t, _, _) in GRIDS.items() if t == task)
        raise StageError(f"{key}: none of {names} learns {task}; add one of: {fits}")
    return kept


def make_estimator(name: str, value: float, seed: int, log: bool = True):
    """``name``'s estimator at grid ``value``; ``log``: a ridge regresses log1p targets."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if name == "logistic_regression":
        estimator = LogisticRegression(C=value, max_iter=3000, random_state=seed)
    elif name == "rbf_svm":
        # Platt-scaled probabilities (sigmoid calibration, deterministic folds) give the
        # log-loss; accuracy is the argmax of the same probabilities.
        estimator = CalibratedClassifierCV(
            SVC(C=value, kernel="rbf", gamma="scale"), method="sigmoid", ensemble=False
        )
    elif not log:
        return make_pipeline(StandardScaler(), Ridge(alpha=value))
    else:
        return TransformedTargetRegressor(
            regressor=make_pipeline(StandardScaler(), Ridge(alpha=value)),
            func=np.log1p,
            inverse_func=np.expm1,
        )
    return make_pipeline(StandardScaler(), estimator)


def outputs_of(estimator, objective: str, x: np.ndarray) -> torch.Tensor:
    """The estimator's predictions in the form the objective's metrics take from a network:
    log-probabilities (classification), log1p predictions (regression) or the predictions
    (regression on a linear scale, ``regression_rmse``)."""
    if objective == "classification":
        probabilities = np.clip(estimator.predict_proba(x), 1e-12, 1.0)
        return torch.from_numpy(np.log(probabilities))
    prediction = estimator.predict(x).astype(np.float64)
    if OBJECTIVES[objective].log:
        prediction = np.log1p(np.clip(prediction, 0.0, None))
    return torch.from_numpy(prediction)[:, None]


def scored(estimator, objective: str, x) -> torch.Tensor:
    """``outputs_of`` over the rows of ``x`` (an array, or a split's member left in its file)
    a chunk at a time (core.npz.row_chunks): neither a val or test split larger than memory
    nor its float64 copy is ever held whole."""
    return torch.cat([outputs_of(estimator, objective, _flat(c)) for c in row_chunks(x)])


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).astype(np.float64)


def _subsample(y: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """At most ``max_rows`` train rows (seeded), so an SVM stays tractable on MNIST."""
    index = np.arange(len(y))
    if len(y) <= max_rows:
        return index
    return np.sort(np.random.default_rng(seed).choice(index, max_rows, replace=False))


@dataclass
class Selected:
    name: str
    hyperparameter: str
    value: float
    val: dict[str, float]
    grid: list[dict]


def select_baselines(
    names: list[str], train: dict, val: dict, objective: str, seed: int, max_rows: int
) -> tuple[list[Selected], dict]:
    """Fit each estimator for every grid value on train; keep the best on val.
    ``objective``: the split's OBJECTIVES key (learn.objectives.objective_key)."""
    task = OBJECTIVES[objective].name
    rows = _subsample(train["y"], max_rows, seed)
    x_train, y_train = _flat(train["x"][rows]), train["y"][rows]
    if task == "regression":
        y_train = y_train.astype(np.float64)  # log1p/expm1 round-trip exactly in float64
    y_val = torch.from_numpy(val["y"])
    selected, fitted = [], {}
    for name in names:
        estimator_task, hyper, grid = GRIDS[name]
        if estimator_task != task:
            raise ValueError(f"baseline {name!r} is for {estimator_task}, not {task}")
        scores, best = [], None
        for value in grid:
            estimator = make_estimator(name, value, seed, OBJECTIVES[objective].log)
            estimator.fit(x_train, y_train)
            outputs = scored(estimator, objective, val["x"])
            metrics = OBJECTIVES[objective].metrics(outputs, y_val)
            scores.append({hyper: value, **metrics})
            # Best: highest accuracy (classification) or lowest RMSLE (RMSE); then lowest loss.
            key = (-metrics.get("accuracy", 0.0), metrics["loss"])
            if best is None or key < best[0]:
                best = (key, value, estimator, metrics)
        _, value, estimator, metrics = best
        selected.append(Selected(name, hyper, value, metrics, scores))
        fitted[name] = estimator
    return selected, fitted


def _canonical_zip(data: bytes) -> bytes:
    """skops names array members and shared references after ``id()`` and stamps the time,
    so equal estimators give different bytes; number them in order of appearance in
    schema.json and fix the timestamps, so reruns are byte-equal (DVC sees no change)."""
    import re
    import zipfile

    source = zipfile.ZipFile(io.BytesIO(data))
    schema = source.read("schema.json").decode()
    members = [n for n in source.namelist() if n != "schema.json"]
    order = sorted(members, key=lambda n: (schema.find(f'"{n}"'), n))
    names = {old: f"{i}{Path(old).suffix}" for i, old in enumerate(order)}
    schema = re.sub(r'"([^"/]+\.npy)"', lambda m: f'"{names.get(m.group(1), m.group(1))}"', schema)
    # "__id__" (shared-reference keys) are id() values too: number them in order.
    ids: dict[str, int] = {}
    schema = re.sub(
        r'"__id__": (\d+)',
        lambda m: f'"__id__": {ids.setdefault(m.group(1), len(ids))}',
        schema,
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for name, payload in [("schema.json", schema.encode())] + [
            (names[old], source.read(old)) for old in order
        ]:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(info, payload)
    return out.getvalue()


def save_baselines(fitted: dict, folder: Path) -> str:
    """Write the fitted estimators as one skops file; return its md5."""
    import skops.io as sio

    data = _canonical_zip(sio.dumps(fitted))
    with atomic_path(folder / FILE) as tmp:
        tmp.write_bytes(data)
    return hashlib.md5(data).hexdigest()


def load_baselines(folder: Path) -> dict:
    """Load with skops, trusting beyond skops' own defaults only the types ``make_estimator``
    builds (checked before anything is loaded). A file from a remote or a commit is
    untrusted: a prefix rule such as "any numpy. or sklearn. name" would let it pick
    callables (a FunctionTransformer of numpy.testing's ``runstring`` runs code)."""
    import skops.io as sio

    path = folder / FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; run `dvc repro` (stage baselines@...) first")
    data = path.read_bytes()
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as err:  # not a skops zip: a truncated or foreign file
        raise CheckpointError(f"{path}: not a skops file ({err}); rerun `dvc repro`") from None
    unexpected = sorted(set(untrusted) - TRUSTED_TYPES)
    if unexpected:
        raise CheckpointError(
            f"{path}: holds types the baselines never write: {unexpected}; refusing to load "
            f"it (rerun `dvc repro -f baselines@...` to rebuild it)"
        )
    return sio.loads(data, trusted=list(untrusted))


def write_selection(selected: list[Selected], folder: Path, val_file: Path) -> None:
    """selection.json (what evaluate loads) and the validation metrics of every estimator."""
    write_json(
        folder / "selection.json",
        {
            s.name: {"hyperparameter": s.hyperparameter, "value": s.value, "grid": s.grid}
            for s in selected
        },
    )
    # Metrics hold what a user compares: the chosen value and its validation scores.
    write_json(val_file, {s.name: {"val": s.val, s.hyperparameter: s.value} for s in selected})


def evaluate_baselines(folder: Path, test: dict, objective: str, meta: dict) -> dict[str, dict]:
    """The one test evaluation of each chosen baseline (``objective``: as select_baselines)."""
    fitted = load_baselines(folder)
    selection = read_json(folder / "selection.json", f"baselines@{folder.name}")
    y = torch.from_numpy(test["y"])
    results = {}
    for name in selection:
        outputs = scored(fitted[name], objective, test["x"])
        metrics, _ = OBJECTIVES[objective].test_report(outputs, y, meta)
        results[name] = metrics
    return results


def log_baselines(
    dataset: str,
    identity: str,
    stage: str,
    metrics: dict[str, dict[str, float]],
    tags: dict[str, str],
    params: dict[str, dict] | None = None,
) -> None:
    """Per baseline, this execution of ``stage`` (baselines, evaluate_baselines) as its own
    MLflow run, nested under the baseline's parent run (role ``baseline``) in the dataset's
    experiment, found again by tags: ``identity`` (the skops file's md5) ties the stages.
    The parent shows each execution's metrics (val, then test) as its summary."""
    from reprolab.tracking.runs import Tracker

    for name, values in metrics.items():
        tracker = Tracker(dataset, name, identity, role="baseline")
        tracker.start_execution(stage, tags)
        chosen = (params or {}).get(name, {})
        tracker.log_group_params(chosen)
        tracker.log(tracker.run_id, metrics=values)
        tracker.finish_execution(values)
