"""End to end: a real `dvc repro` in a temporary git repo, then what reruns and what is logged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import (
    GOLDEN,
    TINY_MODELS,
    TINY_PARAMS,
    copy_repo,
    md5s,
    output_hashes,
    run,
    set_params,
    stages_run,
)

pytestmark = pytest.mark.slow

MODELS = list(TINY_MODELS)
GENERATORS = ["dcgan"]
CLASSIFIERS = [m for m in MODELS if m not in ("tabular_mlp", *GENERATORS)]
SUPERVISED = [m for m in MODELS if m not in GENERATORS]
KINDS = ("image", "tabular")
# Stage names per model: tune@mlp, ..., tune_regressor@tabular_mlp, tune_generator@dcgan...
SUFFIX = {"tabular_mlp": "_regressor", **dict.fromkeys(GENERATORS, "_generator")}
MODEL_STAGES = {
    m: {f"{s}{SUFFIX.get(m, '')}@{m}" for s in ("tune", "train", "evaluate")} for m in MODELS
}
DATA_STAGES = {
    f"{s}@{k}" for s in ("download", "split", "baselines", "evaluate_baselines") for k in KINDS
}
ALL_STAGES = DATA_STAGES | {"report"} | set().union(*MODEL_STAGES.values())
TRACKED = [
    "models/*/model.pt",
    "models/*/model.json",
    "models/*/best_params.json",
    "models/baselines/*/*",
    "metrics/*/*.json",
    "metrics/baselines/*/*.json",
    "plots/*/*",
    "data/splits/*/*",
    "reports/*.md",
    # Not reports/index.html: its training-time column is wall-clock, read from MLflow.
    "reports/figures/*.png",
]


@pytest.fixture(scope="module")
def pipeline(tiny_pipeline: dict) -> dict:
    return {**tiny_pipeline, "md5": md5s(tiny_pipeline["repo"], TRACKED)}


def test_first_run_log_shows_progress_lines_and_no_download_bars(pipeline: dict) -> None:
    """`dvc repro` into a pipe (a log, CI): each training says its epochs as it goes (no
    bar off a terminal), and MLflow's "Downloading artifacts" bars stay out of it."""
    log = pipeline["first"].stdout + pipeline["first"].stderr
    max_epochs = TINY_PARAMS["generators"]["dcgan"]["budget"]["max_epochs"]
    assert f"train dcgan: epoch 1/{max_epochs} val_fid " in log, log[-3000:]
    assert "train dcgan: " in log and " epochs, best " in log
    assert "trial 0: epoch 1/" in log
    assert "Downloading artifacts" not in log
    assert "it/s]" not in log  # no tqdm bar of any kind


def test_first_run_runs_every_stage_and_writes_every_output(pipeline: dict) -> None:
    repo = pipeline["repo"]
    assert set(stages_run(pipeline["first"].stdout)) == ALL_STAGES
    for model in GENERATORS:
        for rel in (
            f"models/{model}/model.pt",
            f"models/{model}/model.json",
            f"metrics/{model}/train.json",
            f"plots/gan/{model}.tsv",
            f"plots/fid/{model}.tsv",
            f"plots/trials/{model}.tsv",
            f"plots/samples/{model}.png",
        ):
            assert (repo / rel).is_file(), rel
        trials = (repo / f"plots/trials/{model}.tsv").read_text().splitlines()[1:]
        assert len(trials) == TINY_PARAMS["generators"][model]["budget"]["n_trials"]
        test = json.loads((repo / f"metrics/{model}/test.json").read_text())
        assert test["fid"] > 0 and test["n_test"] == 270, test
        assert json.loads((repo / f"models/{model}/model.json").read_text())["scorer"] == "lenet"
    for model in SUPERVISED:
        test_plot = "predictions" if model == "tabular_mlp" else "confusion"
        for rel in (
            f"models/{model}/model.pt",
            f"models/{model}/model.json",
            f"models/{model}/best_params.json",
            f"metrics/{model}/train.json",
            f"metrics/{model}/test.json",
            f"plots/curves/{model}.tsv",
            f"plots/{test_plot}/{model}.csv",
            f"plots/trials/{model}.tsv",
        ):
            assert (repo / rel).is_file(), rel
        best = json.loads((repo / f"models/{model}/best_params.json").read_text())
        assert set(best) >= {"lr", "weight_decay", "study"}
        assert TINY_PARAMS["tune"]["n_trials"] == len(
            (repo / f"plots/trials/{model}.tsv").read_text().splitlines()[1:]
        )
        test = json.loads((repo / f"metrics/{model}/test.json").read_text())
        if model in CLASSIFIERS:
            assert 0.5 < test["accuracy"] <= 1.0, test  # 3 epochs on digits: far above chance
        else:
            # RMSLE on diabetes (targets 25..346): predicting the train mean scores ~0.4.
            assert 0.0 < test["rmsle"] < 1.5 and test["loss"] == test["rmsle"], test
    headline = json.loads((repo / "reports/metrics.json").read_text())  # the DVC metrics
    assert sorted(headline) == sorted(MODELS)
    assert {k for v in headline.values() for k in v} == {"test_acc", "test_rmsle", "test_fid"}
    leaderboard = (repo / "reports/summary.md").read_text()
    baselines = ("logistic_regression", "rbf_svm", "ridge")
    assert all(f"| {m} |" in leaderboard for m in (*MODELS, *baselines))
    assert "## Classifiers on digits" in leaderboard and "## Regressors on diabetes" in leaderboard
    assert "## Generators on digits" in leaderboard
    # 4 each: curves, confusion or predictions, history, importances (a generator: its GAN
    # curves and samples instead of the first two).
    assert len(list((repo / "reports/figures").glob("*.png"))) == 4 * len(MODELS)
    for kind, names in (("image", baselines[:2]), ("tabular", baselines[2:])):
        test = json.loads((repo / f"metrics/baselines/{kind}/test.json").read_text())
        assert set(test) == set(names), test
    # No timestamps, run ids or absolute paths in DVC-tracked outputs.
    for rel in pipeline["md5"]:
        if rel.endswith((".json", ".tsv", ".csv", ".md", ".html")):
            text = (repo / rel).read_text()
            assert str(repo) not in text and "/tmp" not in text, rel


def test_second_repro_runs_nothing(pipeline: dict) -> None:
    result = run(["dvc", "repro"], pipeline["repo"])
    assert stages_run(result.stdout) == []
    status = run(["dvc", "status"], pipeline["repo"])
    assert "up to date" in status.stdout


def test_mlflow_store_holds_parents_trials_and_registered_models(pipeline: dict) -> None:
    import mlflow
    import numpy as np
    from mlflow.tracking import MlflowClient

    repo = pipeline["repo"]
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("reprolab-digits")
    assert experiment is not None
    assert experiment.artifact_location.startswith(f"file://{repo}")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("reprolab.role") == "model"]
    assert sorted(r.data.tags["reprolab.model"] for r in parents) == sorted(
        CLASSIFIERS + GENERATORS
    )
    for parent in parents:
        model = parent.data.tags["reprolab.model"]
        # A run per stage execution under the parent, the tune run's trials under it.
        executions = {
            r.data.tags["reprolab.stage"].split("@")[0]: r
            for r in runs
            if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        }
        suffix = "_generator" if model in GENERATORS else ""
        assert set(executions) == {f"{s}{suffix}" for s in ("tune", "train", "evaluate")}
        assert all(r.info.status == "FINISHED" for r in executions.values())
        tune = executions[f"tune{suffix}"].info.run_id
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == tune]
        budget = TINY_PARAMS["generators"].get(model, {}).get("budget", TINY_PARAMS["tune"])
        assert len(children) == budget["n_trials"]
        for child in children:
            assert child.info.status in ("FINISHED", "KILLED")
            if child.info.status == "KILLED":
                assert child.data.tags.get("reprolab.pruned_reason")
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["reprolab.device"] == "cpu"
        assert len(parent.data.tags["reprolab.git_sha"]) == 40
        assert parent.data.tags["reprolab.data_md5.train"]
        metric = "fid" if model in GENERATORS else "accuracy"
        assert f"test_{metric}" in parent.data.metrics and f"val_{metric}" in parent.data.metrics
        assert "best.lr" in parent.data.params
    baselines = [r for r in runs if r.data.tags.get("reprolab.role") == "baseline"]
    assert {r.data.tags["reprolab.model"] for r in baselines} == {
        "logistic_regression",
        "rbf_svm",
    }
    for baseline in baselines:  # each stage ends the run it logs into: none left RUNNING
        assert baseline.info.status == "FINISHED"
        assert {"val_accuracy", "test_accuracy"} <= set(baseline.data.metrics)
        stages = {
            r.data.tags["reprolab.stage"]
            for r in runs
            if r.data.tags.get("mlflow.parentRunId") == baseline.info.run_id
        }
        assert stages == {"baselines@image", "evaluate_baselines@image"}
    versions = client.search_model_versions("name = 'digits-mlp'")
    assert len(versions) == 1 and versions[0].tags["git_sha"]
    # A classifier's version is a pyfunc from code: class name, index, a probability per class.
    model = mlflow.pyfunc.load_model("models:/digits-mlp/1")
    x = np.load(repo / "data/splits/image/val.npz")["x"][:5].astype("float32")
    import torch

    answer = model.predict(x)
    assert len(answer) == 5 and {"class", "class_index"} <= set(answer.columns)
    info = mlflow.models.get_model_info("models:/digits-mlp/1")
    assert info.signature is not None and info.saved_input_example_info is not None
    # The generator: noise (N, latent, 1, 1) -> images in raw pixel values (0..16 for digits).
    generator = mlflow.pytorch.load_model("models:/digits-dcgan/1")
    with torch.no_grad():
        images = generator(torch.randn(3, 32, 1, 1))
    assert images.shape == (3, 1, 8, 8) and images.min() >= 0 and images.max() <= 16
    signature = mlflow.models.get_model_info("models:/digits-dcgan/1").signature.to_dict()
    assert "[-1, 32, 1, 1]" in signature["inputs"] and "[-1, 1, 8, 8]" in signature["outputs"]


def test_changing_one_models_param_reruns_only_that_model(pipeline: dict, tmp_path: Path) -> None:
    repo = copy_repo(pipeline["repo"], tmp_path / "repo")
    studies = {
        m: json.loads((repo / f"models/{m}/best_params.json").read_text())["study"] for m in MODELS
    }
    params = yaml.safe_load((repo / "params.yaml").read_text())
    batch = params["classifiers"]["mlp"]["batch_size"]
    set_params(repo, {"classifiers": {"mlp": {"batch_size": batch // 2}}})
    result = run(["dvc", "repro"], repo)
    assert set(stages_run(result.stdout)) == MODEL_STAGES["mlp"] | {"report"}
    # A params change starts a fresh study for that model only.
    after = {
        m: json.loads((repo / f"models/{m}/best_params.json").read_text())["study"] for m in MODELS
    }
    assert after["mlp"] != studies["mlp"]
    assert all(after[m] == studies[m] for m in MODELS if m != "mlp")


def test_changing_the_split_seed_reruns_everything_downstream(
    pipeline: dict, tmp_path: Path
) -> None:
    """A new split seed reruns both splits (new files) and leaves every stage that reads a
    split stale (`report` too: it reads the splits' meta.json, the scores of a constant
    guess). Running the stale stages is what `dvc repro` does with any stale stage, as
    test_first_run and test_changing_one_models_param show; rerunning them all here would
    double this module's time."""
    repo = copy_repo(pipeline["repo"], tmp_path / "repo")
    before = md5s(repo, ["data/splits/*/*.npz"])
    assert len(before) == 6
    set_params(repo, {"split": {"seed": 123}})
    result = run(["dvc", "repro", "split@image", "split@tabular"], repo)
    assert set(stages_run(result.stdout)) == {"split@image", "split@tabular"}
    after = md5s(repo, ["data/splits/*/*.npz"])
    assert all(after[p] != before[p] for p in before), "a split kept its files"
    stale = set(json.loads(run(["dvc", "status", "--json"], repo).stdout))
    upstream = {f"{s}@{k}" for s in ("download", "split") for k in KINDS}
    assert stale == ALL_STAGES - upstream


def test_output_hashes_match_the_golden_file_written_on_another_machine(pipeline: dict) -> None:
    """Portable numerics: every output hash of the TINY pipeline's dvc.lock equals the one
    recorded in tests/golden/tiny_outputs.json, on any x86-64 machine with AVX2 (this also
    proves a clean run reproduces an earlier one byte for byte, on this machine or another;
    tests/test_cpus.py reruns the computing stages on emulated Intel and AMD CPUs).
    After a change that is meant to change results: REPROLAB_WRITE_GOLDEN=1 pytest -k golden."""
    import os

    hashes = output_hashes(pipeline["repo"])
    if os.environ.get("REPROLAB_WRITE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(hashes, indent=2, sort_keys=True) + "\n")
        pytest.skip(f"wrote {GOLDEN}")
    golden = json.loads(GOLDEN.read_text())
    differ = {p: (golden.get(p), h) for p, h in hashes.items() if golden.get(p) != h}
    assert not differ, f"outputs whose bits differ from the golden file: {differ}"


def test_a_fresh_clone_recomputes_every_stage(pipeline: dict, tmp_path: Path) -> None:
    """A clone has git's files and no DVC cache: every stage has an output it lacks, so its
    first `dvc repro` recomputes them all (the stores get every run, trial and test metric)."""
    repo = copy_repo(pipeline["repo"], tmp_path / "repo")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "results"], repo)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert set(json.loads(run(["dvc", "status", "--json"], clone).stdout)) == ALL_STAGES


def test_a_new_torch_pin_or_numerics_mode_reruns_what_it_computes(
    pipeline: dict, tmp_path: Path
) -> None:
    """The environment is part of DVC's cache key: requirements.lock (the pins) is a dep of
    every stage that computes with the pinned packages (the split with scikit-learn, the
    report's PNGs with matplotlib too), not of download (it copies and checksums files); the
    numerics mode is a param of the stages that compute floats; the README is nothing's."""
    import json

    repo = copy_repo(pipeline["repo"], tmp_path / "repo")
    (repo / "README.md").write_text("edited\n")
    assert json.loads(run(["dvc", "status", "--json"], repo).stdout) == {}
    lock = repo / "requirements.lock"
    lock.write_text(lock.read_text().replace("torch==2.14.1", "torch==2.15.0"))
    stale = json.loads(run(["dvc", "status", "--json"], repo).stdout)
    computing = {"tune@mlp", "train@mlp", "evaluate@mlp", "train_generator@dcgan"}
    assert computing | {"split@image", "evaluate_baselines@image", "report"} <= set(stale)
    assert not {"download@image", "download@tabular"} & set(stale)
    # Portable results need the pinned torch: the stage refuses, in one line.
    result = run(["dvc", "repro", "-s", "evaluate@mlp"], repo, check=False)
    assert result.returncode != 0
    assert "torch 2.14.1 is installed but requirements.lock pins 2.15.0" in result.stderr
    lock.write_text(lock.read_text().replace("torch==2.15.0", "torch==2.14.1"))
    set_params(repo, {"numerics": "native"})
    stale = json.loads(run(["dvc", "status", "--json"], repo).stdout)
    assert {"tune@mlp", "train@mlp", "evaluate@mlp"} <= set(stale)
    assert "split@image" not in stale


def test_studies_explain_their_names_and_share_one_lock_file(pipeline: dict) -> None:
    """Each study's user attrs are what its name's fingerprint hashes (optuna-dashboard shows
    them), and the studies of the storage leave one lock file, not one each."""
    import hashlib

    import optuna

    from reprolab.tuning.labels import identity_attrs

    repo = pipeline["repo"]
    storage = f"sqlite:///{repo / '.optuna/studies.db'}"
    summaries = optuna.get_all_study_summaries(storage)
    assert {s.study_name.split(".")[1] for s in summaries} >= set(MODELS)
    for summary in summaries:
        # `about` is for a reader; the rest is what the name's fingerprint hashes.
        assert summary.user_attrs["about"].startswith(summary.study_name.split(".")[1] + " (")
        attrs = identity_attrs(summary.user_attrs)
        assert {"seed", "tune", "train", "model", "data", "code"} <= set(attrs)
        digest = hashlib.sha256(json.dumps(attrs, sort_keys=True).encode()).hexdigest()
        assert summary.study_name.endswith(f".{digest[:12]}")
    assert sorted(p.name for p in (repo / ".optuna").iterdir()) == [
        "studies.db",
        "studies.db.lock",
    ]


def test_dvc_plots_reads_every_plot_and_nothing_else(pipeline: dict) -> None:
    """The plots folders hold cached outputs, so DVC writes a .gitignore beside them;
    .dvcignore keeps it from being read as a plot (a 'file type error' per folder)."""
    shown = json.loads(run(["dvc", "plots", "show", "--json"], pipeline["repo"]).stdout)
    assert not shown.get("errors"), shown.get("errors")
    assert (pipeline["repo"] / "plots/trials/.gitignore").is_file()


def test_dashboard_names_the_objective_and_ranks_params_as_the_report(pipeline: dict) -> None:
    """optuna-dashboard shows the objective's name (not "Objective 0"), and its importances
    (PED-ANOVA over the study's complete trials) are the report's, from the trials table."""
    import warnings

    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    from reprolab.core.params import load_params
    from reprolab.report.figures import param_importances, read_table

    repo = pipeline["repo"]
    params = load_params(repo / "params.yaml")
    storage = f"sqlite:///{repo / '.optuna/studies.db'}"
    for model in MODELS:
        name = json.loads((repo / f"models/{model}/best_params.json").read_text())["study"]
        study = optuna.load_study(study_name=name, storage=storage)
        objective = "val_fid" if model in GENERATORS else "val_loss"
        assert study.metric_names == [objective]
        assert study.user_attrs["about"].endswith(
            "hex digits of the sha256 of the other attributes (JSON, sorted keys)."
        )
        report = param_importances(read_table(repo / f"plots/trials/{model}.tsv"), params)
        if report is None:  # under two complete trials: the dashboard shows none either
            assert len(study.get_trials(states=[optuna.trial.TrialState.COMPLETE])) <= 1
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dashboard = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
        assert report.keys() == dashboard.keys()
        assert max(abs(report[k] - dashboard[k]) for k in report) < 0.02, (report, dashboard)
