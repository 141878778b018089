"""A table of the user's own (`datasets.tabular: csv`): real tables that ship with
scikit-learn, tables with strings and holes, the encoding fitted on train only and replayed
by predict, and one line naming file, column and row for each kind of bad table."""

from __future__ import annotations

import gzip
import json
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from reprolab.core.errors import ReprolabError
from reprolab.data.fetch import fetch_dataset, load_raw
from reprolab.data.split import split_indices, write_splits
from reprolab.data.tables import FEW_CLASSES, UNKNOWN, TableError, encode_file, unseen_warnings

SKLEARN_DATA = Path(find_spec("sklearn").submodule_search_locations[0]) / "datasets" / "data"
HOME = Path("data/own/tabular")


def sklearn_table(name: str, dest: Path, target: str = "target", labels: bool = True) -> Path:
    """A bundled scikit-learn CSV (first row: n_samples, n_features, class names) written as
    a headed table: f0..fN and the target, as class names (``labels``) or their indices."""
    with open(SKLEARN_DATA / name) as f:
        header = f.readline().strip().split(",")
        values = np.loadtxt(f, delimiter=",")
    frame = pd.DataFrame(values[:, :-1], columns=[f"f{i}" for i in range(values.shape[1] - 1)])
    codes = values[:, -1].astype(int)
    frame[target] = np.array(header[2:])[codes] if labels else codes
    frame.to_csv(dest, index=False)
    return dest


def diabetes_table(dest: Path) -> Path:
    with gzip.open(SKLEARN_DATA / "diabetes_data_raw.csv.gz", "rt") as f:
        x = np.loadtxt(f)
    with gzip.open(SKLEARN_DATA / "diabetes_target.csv.gz", "rt") as f:
        y = np.loadtxt(f)
    frame = pd.DataFrame(x, columns=["age", "sex", "bmi", "bp", *[f"s{i}" for i in range(1, 7)]])
    frame["sex"] = np.where(frame["sex"] == 1, "female", "male")  # a string column
    frame["progression"] = y
    frame.to_csv(dest, index=False)
    return dest


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / HOME).mkdir(parents=True)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def options(path: str | None, target: str) -> dict:
    return {
        "path": path, "target": target, "drop": [], "task": "auto", "loss": "auto",
        "max_categories": 50,
    }  # fmt: skip


def load(workspace: Path, file: str, target: str, **more):
    opts = options(f"{HOME}/{file}", target) | more
    fetch_dataset("csv", workspace / "raw", options=opts)
    return load_raw("csv", workspace / "raw")


def split(workspace: Path, arrays) -> dict:
    return write_splits(arrays, workspace / "splits", 0.2, 0.2, seed=0)


def test_iris_classes_are_learned_from_its_class_names(workspace: Path) -> None:
    sklearn_table("iris.csv", workspace / HOME / "iris.csv")
    arrays = load(workspace, "iris.csv", "target")
    assert arrays.task == "classification"
    assert arrays.classes == ["setosa", "versicolor", "virginica"]
    meta = split(workspace, arrays)
    assert meta["input_shape"] == [4] and meta["sizes"] == {"train": 90, "val": 30, "test": 30}
    train = np.load(workspace / "splits" / "train.npz")["x"]
    assert np.allclose(train.mean(0), 0, atol=1e-5) and np.allclose(train.std(0), 1, atol=1e-5)
    test = np.load(workspace / "splits" / "test.npz")["x"]
    assert not np.allclose(test.mean(0), 0, atol=1e-3)  # standardised with train's statistics


def test_the_task_is_guessed_from_the_target_and_params_override_it(workspace: Path) -> None:
    sklearn_table("wine_data.csv", workspace / HOME / "wine.csv", labels=False)  # 0, 1, 2
    wine = load(workspace, "wine.csv", "target")
    assert wine.task == "classification" and wine.classes == ["0", "1", "2"]
    forced = load(workspace, "wine.csv", "target", task="regression")
    assert forced.task == "regression" and forced.y.dtype == np.float32
    diabetes_table(workspace / HOME / "diabetes.csv")  # 214 distinct whole scores
    assert load(workspace, "diabetes.csv", "progression").task == "regression"
    few = load(workspace, "diabetes.csv", "progression", task="classification")
    assert few.task == "classification" and len(few.classes) > FEW_CLASSES


def test_strings_and_holes_are_encoded_with_train_statistics_only(workspace: Path) -> None:
    rng = np.random.default_rng(0)
    n = 60
    frame = pd.DataFrame(
        {
            "id": np.arange(n),
            "size": rng.normal(10, 2, n).round(3),
            "colour": rng.choice(["red", "green", "blue"], n),
            "label": rng.choice(["a", "b"], n),
        }
    )
    frame.loc[[3, 17, 40], "size"] = np.nan
    frame.loc[[5, 22], "colour"] = np.nan
    frame.to_csv(workspace / HOME / "holes.csv", index=False)
    arrays = load(workspace, "holes.csv", "label", drop=["id"])
    assert arrays.features == ["size", "colour"]
    meta = split(workspace, arrays)
    indices = split_indices(arrays.y, 0.2, 0.2, 0)
    train = indices["train"]
    size, colour = meta["table"]["columns"]
    assert size["median"] == pytest.approx(np.nanmedian(frame["size"].to_numpy()[train]))
    assert size["median"] != pytest.approx(np.nanmedian(frame["size"].to_numpy()))
    assert colour["categories"] == sorted(frame["colour"].iloc[train].dropna().unique())
    assert meta["input_shape"] == [1 + len(colour["categories"]) + 1]
    assert meta["features"] == ["size", "colour"] and meta["classes"] == ["a", "b"]
    # predict's replay of the record on the whole file gives split's rows, bit for bit.
    replayed = np.stack([x for _, x in encode_file(workspace / HOME / "holes.csv", meta["table"])])
    for name, rows in indices.items():
        x = np.load(workspace / "splits" / f"{name}.npz")["x"]
        assert np.array_equal(x, replayed[rows]), name
    hole = replayed[5]  # a missing colour: the unknown bucket, a one-hot like any category
    assert hole[-1] == 1.0 and hole[1:-1].sum() == 0.0


def test_a_parquet_table_reads_like_its_csv(workspace: Path) -> None:
    sklearn_table("breast_cancer.csv", workspace / HOME / "bc.csv")
    pd.read_csv(workspace / HOME / "bc.csv").to_parquet(workspace / HOME / "bc.parquet")
    csv, parquet = load(workspace, "bc.csv", "target"), load(workspace, "bc.parquet", "target")
    assert parquet.classes == csv.classes == ["benign", "malignant"]
    assert np.array_equal(parquet.y, csv.y)
    csv_x, _ = csv.encode(np.arange(0, 569, 2))
    parquet_x, _ = parquet.encode(np.arange(0, 569, 2))
    assert np.allclose(csv_x, parquet_x)


def test_a_category_train_never_saw_goes_to_unknown_with_a_counted_warning(
    workspace: Path,
) -> None:
    rows = [f"{v},{'xy'[v % 2]},{'pq'[v % 2]}" for v in range(40)]
    (workspace / HOME / "new.csv").write_text("v,c,y\n" + "\n".join(rows) + "\n")
    arrays = load(workspace, "new.csv", "y")
    train = split_indices(arrays.y, 0.2, 0.2, 0)["train"]
    other = next(i for i in range(40) if i not in train)
    rows[other] = f"{other},zz,{rows[other].split(',')[2]}"  # only in val or test
    (workspace / HOME / "new.csv").write_text("v,c,y\n" + "\n".join(rows) + "\n")
    meta = split(workspace, load(workspace, "new.csv", "y"))
    assert "zz" not in meta["table"]["columns"][1]["categories"]
    assert meta["table"]["unseen"] == {"c": [1, other + 1]}
    (line,) = unseen_warnings(meta["table"])
    assert line.startswith(f"warning: {HOME}/new.csv, column 'c': 1 val/test row(s)")
    assert f"row {other + 1}" in line and UNKNOWN in line


BAD_TABLES = {
    "no target column": ("a,b\n1,2\n3,4\n", "y", "no target column 'y' (csv.target)"),
    "missing target": ("a,y\n1,p\n2,\n3,q\n", "y", "column 'y' (the target), row 2: missing"),
    "mixed column": ("a,y\n1,p\nten,q\n3,p\n", "y", "column 'a': mixes numbers and words (row 1"),
    "empty file": ("", "y", "the file is empty (no header"),
    "header only": ("a,y\n", "y", "the file is empty (a header, no data rows)"),
    "all missing": ("a,b,y\n1,,p\n2,,q\n", "y", "column 'b': every value is missing"),
    "too many categories": (
        "a,y\n" + "".join(f"w{i},p\n" for i in range(4)),
        "y",
        "column 'a', row 4: category 'w3' is number 4, over csv.max_categories (3)",
    ),
    "negative target for RMSLE": ("a,y\n1,2.5\n2,-0.5\n", "y", "row 2: -0.5 < 0; csv.loss rmsle"),
    "words to regress": ("a,y\n1,p\n2,q\n", "y", "row 1: 'p' is a word; regression needs"),
}


@pytest.mark.parametrize("case", BAD_TABLES)
def test_a_bad_table_is_one_line_naming_file_column_and_row(workspace: Path, case: str) -> None:
    text, target, expected = BAD_TABLES[case]
    (workspace / HOME / "bad.csv").write_text(text)
    task = "regression" if case in ("negative target for RMSLE", "words to regress") else "auto"
    loss = "rmsle" if case == "negative target for RMSLE" else "auto"
    with pytest.raises(TableError) as raised:
        load(workspace, "bad.csv", target, max_categories=3, task=task, loss=loss)
    message = str(raised.value)
    assert message.startswith(f"{HOME}/bad.csv") and "\n" not in message
    assert expected in message, message
    assert not (workspace / "raw").exists()  # nothing half-written


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("../outside.csv", "lies outside data/own/tabular/"),
        ("/etc/passwd", "lies outside data/own/tabular/"),
        ("data/own/tabular/link.csv", "lies outside data/own/tabular/"),  # a link out
        ("data/own/tabular/none.csv", "no such file"),
        ("data/own/tabular/code.py", "give .csv or .parquet"),
        (None, "csv.path is not set"),
    ],
)
def test_a_table_outside_the_tracked_folder_is_refused(
    workspace: Path, path: str | None, expected: str
) -> None:
    (workspace.parent / "outside.csv").write_text("a,y\n1,p\n")
    (workspace / HOME / "link.csv").symlink_to(workspace.parent / "outside.csv")
    (workspace / HOME / "code.py").write_text("import os\n")
    with pytest.raises(ReprolabError, match=expected):
        fetch_dataset("csv", workspace / "raw", options=options(path, "y"))


def test_the_tabular_task_is_the_splits_and_baselines_follow_it(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reprolab.core import paths
    from reprolab.core.errors import StageError
    from reprolab.core.kinds import kind_task
    from reprolab.learn.baselines import of_task

    monkeypatch.setattr(paths, "SPLITS", Path("splits"))
    assert kind_task("tabular") == "regression"  # before any split: the bundled tables'
    (workspace / "splits" / "tabular").mkdir(parents=True)
    meta = workspace / "splits" / "tabular" / "meta.json"
    meta.write_text(json.dumps({"task": "classification"}))
    assert kind_task("tabular") == "classification" and kind_task("image") == "classification"
    from reprolab.core.schema import Params
    from reprolab.report.leaderboard import sections

    params = Params.model_validate(
        {"classifiers": {"mlp": {"arch": "mlp"}}, "regressors": {"t": {"arch": "tabular_mlp"}}}
    )
    assert params.task_of("t") == "classification"  # the regressors learn the table's task
    board = sections(params)[1]
    assert (board.group, board.rank_metric, board.higher_is_better) == (
        "regressors",
        "accuracy",
        True,
    )
    meta.write_text(json.dumps({"task": "regression", "target_scale": "linear"}))
    board = sections(params)[1]  # a signed target: ranked by RMSE, no RMSLE column
    assert (board.rank_metric, board.higher_is_better) == ("rmse", False)
    assert [key for _, _, key in board.columns] == ["rmse", "r2"]
    names = ["ridge", "logistic_regression"]
    assert of_task(names, "classification", "baselines.tabular") == ["logistic_regression"]
    with pytest.raises(StageError, match="baselines.tabular: none of"):
        of_task(["ridge"], "classification", "baselines.tabular")


def test_the_baselines_of_a_classified_table_are_classifiers(workspace: Path) -> None:
    from reprolab.learn import baselines

    sklearn_table("wine_data.csv", workspace / HOME / "wine.csv")
    meta = split(workspace, load(workspace, "wine.csv", "target"))
    data = {s: dict(np.load(workspace / "splits" / f"{s}.npz")) for s in ("train", "val", "test")}
    selected, fitted = baselines.select_baselines(
        ["logistic_regression"], data["train"], data["val"], meta["task"], 0, 5000
    )
    folder = workspace / "baselines"
    baselines.save_baselines(fitted, folder)
    baselines.write_selection(selected, folder, workspace / "val.json")
    test = baselines.evaluate_baselines(folder, data["test"], "classification", meta)
    assert selected[0].val["accuracy"] > 0.9 and test["logistic_regression"]["accuracy"] > 0.9


@pytest.mark.slow
def test_a_user_csv_runs_through_tune_train_evaluate_and_predict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Real `dvc repro` of the tabular kind on iris with a string column and holes: the MLP
    classifies it, predict replays the encoding on new rows (columns by name, in any order,
    a hole and an unseen category), and editing the table makes download@tabular stale.
    (A regressed table's stages run the same code with the task's objective: in this
    process, test_a_signed_target_trains_scores_and_predicts_negative_values; through the
    real `dvc repro`, bench/user_tables.py.)"""
    from conftest import TINY_PARAMS, make_repo, run, stages_run

    from reprolab.cli import main

    params = TINY_PARAMS | {
        "datasets": {"image": "digits", "tabular": "csv"},
        "csv": {"path": f"{HOME}/iris.csv", "target": "species", "drop": ["id"]},
        "tune": TINY_PARAMS["tune"] | {"n_trials": 2, "sampler_startup_trials": 1},
    }
    repo = make_repo(tmp_path / "repo", params, models=("mlp", "tabular_mlp"))
    table = sklearn_table("iris.csv", repo / HOME / "iris.csv", target="species")
    frame = pd.read_csv(table)
    frame.insert(0, "id", range(len(frame)))
    frame["soil"] = np.where(frame["f2"] > 3, "clay", "sand")
    frame.loc[::7, "f0"] = np.nan
    frame.loc[::11, "soil"] = np.nan
    frame.to_csv(table, index=False)
    result = run(["dvc", "repro", "evaluate_regressor@tabular_mlp"], repo)
    assert set(stages_run(result.stdout)) == {
        f"{step}@tabular" for step in ("download", "split")
    } | {f"{step}_regressor@tabular_mlp" for step in ("tune", "train", "evaluate")}
    meta = json.loads((repo / "data/splits/tabular/meta.json").read_text())
    assert meta["task"] == "classification" and meta["input_shape"] == [4 + 3]
    test = json.loads((repo / "metrics/tabular_mlp/test.json").read_text())
    assert test["n_test"] == 23 and test["accuracy"] > 0.5  # three classes: chance is 1/3
    model = json.loads((repo / "models/tabular_mlp/model.json").read_text())
    assert model["table"] == meta["table"] and model["classes"] == meta["classes"]
    new = repo / "new.csv"
    new.write_text("f3,f2,f1,f0,soil\n0.2,1.4,3.5,5.1,sand\n2.3,5.9,3.0,,peat\n")
    monkeypatch.chdir(repo)  # in this process: torch is loaded already
    main(["predict", "--model", "models/tabular_mlp", "new.csv"])
    out = capsys.readouterr().out.strip().splitlines()[1:]
    predicted = [line.split("\t")[:2] for line in out]
    assert predicted == [["new.csv:2", "setosa"], ["new.csv:3", "virginica"]]
    frame.iloc[:-1].to_csv(table, index=False)
    assert "download@tabular" in run(["dvc", "status", "download@tabular"], repo).stdout


def signed_table(dest: Path, n: int = 240) -> pd.DataFrame:
    """A table whose target (a change, in degrees) is negative about half the time, with a
    string column, holes in both input kinds and an id to drop."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "id": np.arange(n),
            "temp": rng.normal(0, 2, n).round(3),
            "site": rng.choice(["north", "south", "east"], n),
            "depth": rng.uniform(1, 5, n).round(2),
        }
    )
    shift = frame["site"].map({"north": -3.0, "south": 2.0, "east": 0.0})
    frame["change"] = (1.5 * frame["temp"] + shift + rng.normal(0, 0.3, n)).round(3)
    frame.loc[::13, "temp"] = np.nan
    frame.loc[::17, "site"] = np.nan
    frame.to_csv(dest, index=False)
    return frame


def test_a_target_with_negative_values_is_regressed_on_its_own_scale(workspace: Path) -> None:
    frame = signed_table(workspace / HOME / "signed.csv")
    arrays = load(workspace, "signed.csv", "change", drop=["id"])
    assert (arrays.task, arrays.target_scale) == ("regression", "linear")
    meta = split(workspace, arrays)
    train = split_indices(arrays.y, 0.2, 0.2, 0)["train"]
    y_train = frame["change"].to_numpy()[train]
    assert meta["target_scale"] == "linear" and "target_log1p_mean" not in meta
    assert meta["target_mean"] == pytest.approx(y_train.mean(), abs=1e-5)
    assert meta["target_std"] == pytest.approx(y_train.std(), abs=1e-5)
    assert set(meta["trivial_val"]) == {"rmse"}  # the constant guess: train's mean, in RMSE
    # csv.loss overrides the guess: RMSE on a non-negative target; the bundled tables' meta
    # (RMSLE) keeps its keys, with no target_scale.
    diabetes_table(workspace / HOME / "diabetes.csv")
    assert load(workspace, "diabetes.csv", "progression").target_scale == "log1p"
    forced = load(workspace, "diabetes.csv", "progression", loss="rmse")
    assert forced.target_scale == "linear"


def test_a_signed_target_tunes_trains_evaluates_and_predicts_negative_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The regression task's stage code on a signed target, in this process with a real
    MLflow store: a tuning trial, the final training and the test evaluation learn and score
    the target itself (RMSE), beating the constant guess, with ridge beside them; model.json
    names the target as its output; `reprolab predict` and the logged model answer negative
    values as they are."""
    import subprocess

    from conftest import clean_env

    from reprolab.cli import main
    from reprolab.core import paths
    from reprolab.core.schema import Params
    from reprolab.learn import baselines
    from reprolab.learn.checkpoints import learns_log1p
    from reprolab.learn.context import ModelContext
    from reprolab.learn.serving import answer, load_served
    from reprolab.learn.tasks import get_task
    from reprolab.tracking.runs import stage_execution
    from reprolab.tracking.tags import stage_tags

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / HOME).mkdir(parents=True)
    (tmp_path / ".dvc").mkdir()
    for cmd in (["git", "init", "-q"], ["git", "commit", "-q", "--allow-empty", "-m", "0"]):
        subprocess.run(cmd, cwd=tmp_path, env=clean_env(), check=True)
    signed_table(tmp_path / HOME / "signed.csv")
    opts = options(f"{HOME}/signed.csv", "change") | {"drop": ["id"]}
    fetch_dataset("csv", paths.RAW / "csv", options=opts)
    meta = write_splits(
        load_raw("csv", paths.RAW / "csv"), paths.splits_dir("tabular"), 0.2, 0.2, 0
    )
    trivial = meta["trivial_val"]["rmse"]
    budget = {"epochs": 3, "max_epochs": 40}
    params = Params.model_validate(
        {
            "datasets": {"tabular": "csv"},
            "csv": opts,
            "train": {"patience": 40},
            "classifiers": {"mlp": {"arch": "mlp"}},
            "regressors": {"t": {"arch": "tabular_mlp", "budget": budget}},
        }
    )
    ctx, task = ModelContext(params, "t"), get_task("regression")
    assert ctx.objective == "regression_rmse"
    assert ctx.arch_spec.target_scale == (meta["target_mean"], meta["target_std"])
    rows: list[dict] = []
    value, _ = task.trial_fitter(ctx)(1e-2, 0.0, lambda epoch, row: rows.append(row), "trial")
    assert "val_rmse" in rows[0] and "val_rmsle" not in rows[0]
    assert value == min(row["val_loss"] for row in rows)

    tags = stage_tags("cpu", params, ctx.data_files(("train", "val")))
    best = {"lr": 1e-2, "weight_decay": 0.0, "study": "signed"}
    stage_execution(ctx, "train", best["study"], tags)
    val = task.train_final(ctx, best, tags)["val"]
    assert set(val) == {"rmse", "r2", "loss"} and val["loss"] == val["rmse"] < 0.5 * trivial
    test = task.evaluate(ctx, tags)
    assert "rmsle" not in test and test["rmse"] < 0.5 * trivial and test["r2"] > 0.8
    split_files = {s: dict(np.load(paths.split_file("tabular", s))) for s in ("train", "val")}
    (ridge,), _ = baselines.select_baselines(
        ["ridge"], split_files["train"], split_files["val"], ctx.objective, 0, 5000
    )
    assert "rmsle" not in ridge.val and ridge.val["rmse"] < 0.5 * trivial

    served, about = load_served(paths.model_dir("t"))
    assert about["output"] == "change" and not learns_log1p(about)
    (tmp_path / "new.csv").write_text("depth,site,temp\n2.0,north,-1.5\n3.0,south,2.5\n")
    main(["predict", "--model", "models/t", "new.csv"])
    out = capsys.readouterr().out.strip().splitlines()[1:]
    low, high = (float(line.split("\t")[1]) for line in out)
    assert low < -3.0 < 3.0 < high  # about -5.25 and 5.75: negative answers as they are
    x = torch.from_numpy(np.load(paths.split_file("tabular", "val"))["x"][:3])
    with torch.no_grad():
        raw = served.network(x).numpy()[:, 0].astype(np.float64)
    assert np.array_equal(answer(served, x.numpy(), about)["change"].to_numpy(), raw)
