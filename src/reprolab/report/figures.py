"""The report's figures: PNGs drawn with matplotlib's Agg canvas from DVC-tracked files only.

Byte-deterministic: no pyplot state, the bundled DejaVu font, fixed size and dpi, and no
``Software``/date metadata in the PNG, so two runs on the same inputs give equal bytes.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from reprolab.core.schema import Params

DPI = 100
RC = {"font.family": "DejaVu Sans", "font.size": 9, "svg.hashsalt": "reprolab"}
PNG_METADATA = {"Software": None}  # matplotlib stamps its version otherwise; no date in PNG

# name -> (title, draw); draw(fig, model, params, inputs) fills the figure or returns False
# when the model has nothing to show (the file is then not written).
FigureFn = Callable[[Figure, str, Params, dict], bool]


def read_table(path: Path, sep: str = "\t") -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter=sep))


def _curves(fig: Figure, model: str, params: Params, inputs: dict) -> bool:
    if params.task_of(model) == "generative":
        return False  # a GAN's curves: _gan_curves
    rows = read_table(inputs["curves"] / f"{model}.tsv")
    epochs = [int(r["epoch"]) for r in rows]
    loss_ax, acc_ax = fig.subplots(1, 2)
    for key in ("train_loss", "val_loss"):
        loss_ax.plot(epochs, [float(r[key]) for r in rows], marker="o", label=key)
    loss_ax.set(xlabel="epoch", ylabel="loss", title=f"{model}: loss")
    loss_ax.legend()
    # The task's validation score: val_accuracy (classifiers), val_rmsle or val_rmse.
    score = next(
        (k for k in (rows[0] if rows else {}) if k.startswith("val_") and k != "val_loss"), None
    )
    if score is not None:
        acc_ax.plot(epochs, [float(r[score]) for r in rows], marker="o", color="C2")
        label = score.removeprefix("val_").upper() if "rms" in score else score.removeprefix("val_")
        acc_ax.set(xlabel="epoch", ylabel=f"val {label}", title=f"{model}: validation {label}")
    return True


def _gan_curves(fig: Figure, model: str, params: Params, inputs: dict) -> bool:
    if params.task_of(model) != "generative":
        return False
    rows = read_table(inputs["gan"] / f"{model}.tsv")
    distances = read_table(inputs["fid"] / f"{model}.tsv")
    epochs = [int(r["epoch"]) for r in rows]
    loss_ax, fid_ax = fig.subplots(1, 2)
    for key, label in (("loss_d", "discriminator"), ("loss_g", "generator")):
        loss_ax.plot(epochs, [float(r[key]) for r in rows], marker="o", label=label)
    loss_ax.set(xlabel="epoch", ylabel="loss (BCE)", title=f"{model}: GAN losses")
    loss_ax.legend()
    fid_epochs = [int(r["epoch"]) for r in distances]
    fid_ax.plot(fid_epochs, [float(r["val_fid"]) for r in distances], marker="o", color="C2")
    fid_ax.set(xlabel="epoch", ylabel="Fréchet distance", title=f"{model}: validation distance")
    fid_ax.set_yscale("log")
    return True


def _samples(fig: Figure, model: str, params: Params, inputs: dict) -> bool:
    """The evaluate stage's grid of samples from a fixed noise (plots/samples/<model>.png)."""
    if params.task_of(model) != "generative":
        return False
    import numpy as np
    from PIL import Image

    with Image.open(inputs["samples"] / f"{model}.png") as image:
        pixels = np.asarray(image)
    ax = fig.subplots()
    grey = {"cmap": "gray", "vmin": 0, "vmax": 255} if pixels.ndim == 2 else {}
    ax.imshow(pixels, interpolation="nearest", **grey)
    ax.set_axis_off()
    ax.set_title(f"{model}: samples from a fixed noise")
    return True


def confusion_from_rows(path: Path, classes: list[str]) -> list[list[int]]:
    """counts[actual][predicted] from the test plot's rows (plots/confusion/<model>.csv)."""
    index = {name: i for i, name in enumerate(classes)}
    counts = [[0] * len(classes) for _ in classes]
    for row in read_table(path, sep=","):
        counts[index[row["actual"]]][index[row["predicted"]]] += 1
    return counts


def _confusion(fig: Figure, model: str, params: Params, inputs: dict) -> bool:
    path = inputs["confusion"] / f"{model}.csv"
    if not path.is_file():  # a tabular model classifying a user's table writes it there
        path = inputs["predictions"] / f"{model}.csv"
    classes = inputs["classes"].get(model)
    if not path.is_file() or not classes:
        return False  # not a classifier
    counts = confusion_from_rows(path, classes)
    ax = fig.subplots()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes)
    ax.set_yticks(ticks, classes)
    ax.set(xlabel="predicted", ylabel="actual", title=f"{model}: test confusion matrix")
    top = max(max(row) for row in counts) or 1
    for i, row in enumerate(counts):
        for j, n in enumerate(row):
            if n:
                color = "white" if n > top / 2 else "black"
                ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color=color)
    return True


def _predictions(fig: Figure, model: str, params: Params, inputs: dict) -> bool:
    path = inputs["predictions"] / f"{model}.csv"
    if not path.is_file() or inputs["classes"].get(model):
        return False  # not a regressor
    rows = read_table(path, sep=",")
    actual = [float(r["actual"]) for r in rows]
    predicted = [float(r["predicted"]) for r in rows]
    ax = fig.subplots()
    ax.scatter(actual, predicted, s=8, alpha=0.6)
    low, high = min(actual + predicted), max(actual + predicted)
    ax.plot([low, high], [low, high], color="C3", linewidth=1, label="perfect")
    ax.set(xlabel="actual", ylabel="predicted", title=f"{model}: test predictions")
    ax.legend()
    return True


def _history(fig: Figure, model: str, params: Params, inputs: dict) -> bool:
    rows = read_table(inputs["trials"] / f"{model}.tsv")
    ax = fig.subplots()
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
        chosen = [r for r in rows if r["state"] == state]
        ax.scatter(
            [int(r["trial"]) for r in chosen],
            [float(r["value"]) for r in chosen],
            marker=marker,
            label=state.lower(),
        )
    best, xs, ys = math.inf, [], []
    for r in rows:
        if r["state"] == "COMPLETE":
            best = min(best, float(r["value"]))
        if best < math.inf:
            xs.append(int(r["trial"]))
            ys.append(best)
    ax.step(xs, ys, where="post", color="C3", label="best so far")
    generative = params.task_of(model) == "generative"
    objective = "validation Fréchet distance" if generative else "validation loss"
    ax.set(xlabel="trial", ylabel=objective, title=f"{model}: Optuna optimisation history")
    ax.set_yscale("log")
    ax.legend()
    return True


def param_importances(rows: list[dict[str, str]], params: Params) -> dict[str, float] | None:
    """PED-ANOVA importances of the tuned params over the complete trials of the trials
    table, or None with fewer than two complete trials. PED-ANOVA is what optuna-dashboard
    computes, so the report and the dashboard show one ranking for a study; it is
    deterministic (no seed), where fANOVA's random forest gives other numbers per seed."""
    import warnings

    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    ranges = {"lr": params.tune.lr, "weight_decay": params.tune.weight_decay}
    dists = {k: FloatDistribution(r.low, r.high, log=True) for k, r in ranges.items()}
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    if len(complete) < 2:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    for r in complete:
        # The table rounds to 6 digits; clip so a bound-hugging value stays in range.
        values = {k: min(max(float(r[k]), d.low), d.high) for k, d in dists.items()}
        study.add_trial(
            optuna.trial.create_trial(params=values, distributions=dists, value=float(r["value"]))
        )
    with warnings.catch_warnings():  # experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        evaluator = PedAnovaImportanceEvaluator()
    return dict(get_param_importances(study, evaluator=evaluator, normalize=True))


def _importances(fig: Figure, model: str, params: Params, inputs: dict) -> bool:
    importances = param_importances(read_table(inputs["trials"] / f"{model}.tsv"), params)
    ax = fig.subplots()
    if importances is None:
        ax.text(0.5, 0.5, "fewer than 2 complete trials", ha="center", va="center")
        ax.set_axis_off()
    else:
        names = sorted(importances, key=lambda k: importances[k])
        ax.barh(names, [importances[k] for k in names], color="C0")
        ax.set(xlim=(0, 1), xlabel="importance (PED-ANOVA, as optuna-dashboard)")
    ax.set_title(f"{model}: hyperparameter importances")
    return True


# Per-model figures, in report order; a draw returns False for a model it does not fit.
FIGURES: list[tuple[str, str, FigureFn, tuple[float, float]]] = [
    ("curves", "Learning curves", _curves, (9.0, 3.2)),
    ("samples", "Samples from a fixed noise", _samples, (4.0, 4.2)),
    ("gan", "GAN training", _gan_curves, (9.0, 3.2)),
    ("confusion", "Test confusion matrix", _confusion, (4.6, 3.8)),
    ("predictions", "Test predictions against targets", _predictions, (4.2, 3.8)),
    ("history", "Optuna optimisation history", _history, (5.0, 3.2)),
    ("importance", "Hyperparameter importances", _importances, (5.0, 2.2)),
]


def draw_figures(params: Params, models: list[str], inputs: dict, folder: Path) -> dict:
    """Write ``<kind>-<model>.png`` into ``folder``; return {model: [(title, file name)]}."""
    written: dict[str, list[tuple[str, str]]] = {}
    with matplotlib.rc_context(RC):
        for model in models:
            written[model] = []
            for kind, title, draw, size in FIGURES:
                fig = Figure(figsize=size, dpi=DPI, layout="constrained")
                if not draw(fig, model, params, inputs):
                    continue
                name = f"{kind}-{model}.png"
                fig.savefig(folder / name, format="png", dpi=DPI, metadata=PNG_METADATA)
                written[model].append((title, name))
    return written
