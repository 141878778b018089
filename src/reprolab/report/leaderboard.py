"""The report: every model ranked by its validation metric, test metrics beside it, and
figures, as ``reports/summary.md`` and ``reports/index.html`` (+ ``reports/figures/*.png``).

Every file is drawn from DVC-tracked files only, so the report is byte-identical across
reruns and machines; the wall-clock training times (MLflow's ``train_seconds``) go to the
untracked reports/train_times.tsv.
"""

from __future__ import annotations

from dataclasses import dataclass

from reprolab.core import paths
from reprolab.core.io import atomic_dir, read_json
from reprolab.core.kinds import kind_meta, regression_score
from reprolab.core.schema import Params
from reprolab.report.figures import draw_figures
from reprolab.tracking.runs import logged_metrics

FIGURES_DIR = "figures"
BASELINE_ARCH = "scikit-learn baseline"


@dataclass(frozen=True)
class Section:
    """One leaderboard: a model group, its dataset, and how it ranks and shows metrics."""

    group: str  # params.yaml group (classifiers, regressors)
    kind: str  # image | tabular
    dataset: str
    rank_metric: str  # a validation metric
    higher_is_better: bool
    # (header, which metrics, key) cells after the rank metric
    columns: tuple[tuple[str, str, str], ...]
    note: str = ""  # a paragraph under the title
    baselines: bool = True  # the scikit-learn rows of its kind of dataset


CLASS_COLUMNS = (
    ("val loss", "val", "loss"),
    ("test accuracy", "test", "accuracy"),
    ("test macro-F1", "test", "macro_f1"),
    ("test loss", "test", "loss"),
)
REGRESSION_COLUMNS = (
    ("test RMSLE", "test", "rmsle"),
    ("test RMSE", "test", "rmse"),
    ("test R²", "test", "r2"),
)


def sections(params: Params) -> list[Section]:
    metric = params.report.metric
    out = []
    if params.classifiers:
        out.append(
            Section("classifiers", "image", params.datasets.image, metric, True, CLASS_COLUMNS)
        )
    if params.regressors:
        # A user's table of classes: its models are ranked as the classifiers are; one
        # regressed on a linear scale (negative targets) by RMSE, with no RMSLE column.
        meta = kind_meta("tabular") or {"task": "regression"}
        score = regression_score(meta)
        columns = tuple(c for c in REGRESSION_COLUMNS if score == "rmsle" or c[2] != "rmsle")
        classes = meta["task"] == "classification"
        ranked = (metric, True, CLASS_COLUMNS) if classes else (score, False, columns)
        out.append(Section("regressors", "tabular", params.datasets.tabular, *ranked))
    if params.generators:
        out.append(
            Section(
                "generators",
                "image",
                params.datasets.image,
                "fid",
                False,
                (("test Fréchet distance", "test", "fid"),),
                note=GENERATORS_NOTE,
                baselines=False,
            )
        )
    return out


GENERATORS_NOTE = (
    "The Fréchet distance between real and generated images in the features of the "
    "generator's scorer, a classifier of this pipeline read at its last hidden layer "
    "(src/reprolab/learn/features.py): distances compare only under one scorer and are not "
    "Inception FIDs; each split is compared with as many generated images as it holds."
)


def model_params(params: Params, name: str) -> str:
    """The model's settings from params.yaml, as ``key=value`` pairs."""
    spec = params.model(name)
    pairs = {"optimizer": spec.optimizer, "batch_size": spec.batch_size, **spec.options}
    return ", ".join(f"{k}={v}" for k, v in pairs.items())


def _read(path) -> dict:
    return read_json(path)


def leaderboard_rows(params: Params, section: Section) -> list[dict]:
    rows = []
    for name in getattr(params, section.group):
        train = _read(paths.METRICS / name / "train.json")
        t = train["train"]
        rows.append(
            {
                "model": name,
                "arch": params.model(name).arch,
                "val": train["val"],
                "test": _read(paths.METRICS / name / "test.json"),
                "lr": f"{t['lr']:.3g}",
                "weight_decay": f"{t['weight_decay']:.3g}",
                "params": model_params(params, name),
                "epochs": f"{t.get('kept_epoch', t['best_epoch'])}/{t['epochs_run']}",
                "parameters": f"{t['n_parameters']:,}",
            }
        )
    baselines = paths.METRICS / "baselines" / section.kind
    if section.baselines and (baselines / "val.json").is_file():
        val, test = _read(baselines / "val.json"), _read(baselines / "test.json")
        for name, chosen in val.items():
            hyper = next(k for k in chosen if k not in ("val", "grid"))
            rows.append(
                {
                    "model": name,
                    "arch": BASELINE_ARCH,
                    "val": chosen["val"],
                    "test": test[name],
                    "lr": "-",
                    "weight_decay": "-",
                    "params": f"{hyper}={chosen[hyper]:g}",
                    "epochs": "-",
                    "parameters": "-",
                }
            )
    trivial = trivial_score(section)
    for row in rows:
        row["flag"] = _flag(section, row["val"][section.rank_metric], trivial)
    # Rank on validation only: choosing by test would leak the test split into selection.
    sign = -1 if section.higher_is_better else 1
    rows.sort(
        key=lambda r: (sign * r["val"][section.rank_metric], r["val"].get("loss", 0), r["model"])
    )
    return rows


def ranked(params: Params) -> list[tuple[Section, list[dict]]]:
    """The ranked rows of each section, read from the workspace's files (nothing written)."""
    return [(section, leaderboard_rows(params, section)) for section in sections(params)]


def leaderboards(params: Params) -> tuple[list[tuple[Section, list[dict]]], dict]:
    """The ranked rows of each section, and the figures drawn into reports/figures/."""
    boards = ranked(params)
    models = list(params.all_models())
    specs = {m: _read(paths.model_dir(m) / paths.SPEC_FILE) for m in models}
    inputs = {
        "curves": paths.PLOTS / "curves",
        "trials": paths.PLOTS / "trials",
        "predictions": paths.PLOTS / "predictions",
        "confusion": paths.PLOTS / "confusion",
        "gan": paths.PLOTS / "gan",
        "fid": paths.PLOTS / "fid",
        "samples": paths.PLOTS / "samples",
        "test": {m: _read(paths.METRICS / m / "test.json") for m in models},
        "classes": {m: specs[m].get("classes") for m in models},
    }
    with atomic_dir(paths.REPORTS / FIGURES_DIR) as folder:
        figures = draw_figures(params, models, inputs, folder)
    return boards, figures


HEADLINE = {"accuracy": "test_acc", "rmsle": "test_rmsle", "rmse": "test_rmse", "fid": "test_fid"}


def headline_metrics(params: Params, boards: list[tuple[Section, list[dict]]]) -> dict:
    """reports/metrics.json, the pipeline's DVC metrics: one test number per network (its
    section's headline: accuracy, RMSLE (RMSE) or Fréchet distance), so a default `dvc exp show`
    or `dvc metrics diff` fits a terminal. Every other number stays in metrics/<model>/*.json
    (`dvc metrics diff --targets metrics`)."""
    headline = {}
    for section, rows in boards:
        metric = section.rank_metric if section.rank_metric in HEADLINE else "accuracy"
        for row in rows:
            if row["arch"] != BASELINE_ARCH:
                headline[row["model"]] = {HEADLINE[metric]: row["test"][metric]}
    return {name: headline[name] for name in params.all_models()}


def trivial_score(section: Section) -> float | None:
    """The validation score of a model that ignores its input (split's meta.json)."""
    meta = paths.splits_dir(section.kind) / "meta.json"
    if not meta.is_file():
        return None
    return _read(meta).get("trivial_val", {}).get(section.rank_metric)


def _flag(section: Section, value: float, trivial: float | None) -> str:
    """Why a row must never be champion ('' if none): not better than a trivial model."""
    if trivial is None:
        return ""
    beaten = value > trivial if section.higher_is_better else value < trivial
    return "" if beaten else f"no better than a constant guess (val {trivial:.4f})"


def champion_candidates(rows: list[dict]) -> list[str]:
    """The networks that may become champion, best first: never a baseline, never one no
    better than a constant guess."""
    return [r["model"] for r in rows if r["arch"] != BASELINE_ARCH and not r["flag"]]


def champion_weights_md5(model: str) -> str:
    """The md5 of the model.pt DVC tracks for ``model`` (recorded in its model.json)."""
    return _read(paths.model_dir(model) / paths.SPEC_FILE)["weights_md5"]


def train_times(params: Params) -> list[dict]:
    """Each model's wall-clock training time from its MLflow run (None: not in this store)."""
    rows = []
    for model in params.all_models():
        spec = _read(paths.model_dir(model) / paths.SPEC_FILE)
        logged = logged_metrics(params.dataset_of(model), model, spec.get("study", ""))
        seconds = logged.get("train_seconds")
        rows.append({"model": model, "train_seconds": "-" if seconds is None else seconds})
    return rows
