"""Optuna resume: a tune stage killed mid-study finishes the same study on the next repro."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import optuna
import pytest
from conftest import clean_env, copy_repo, md5s, run, set_params

pytestmark = pytest.mark.slow

N_TRIALS = 6
# Parallel studies: two batches of 3 trials, whatever the workers.
PARALLEL = {"n_trials": N_TRIALS, "epochs": 4, "batch": 3}
OUTPUTS = ["models/mlp/best_params.json", "plots/trials/mlp.tsv"]


@pytest.fixture
def split_repo(tiny_pipeline: dict, tmp_path: Path) -> Path:
    """A copy of the tiny pipeline's workspace: split, tuned, trained (its studies too)."""
    return copy_repo(tiny_pipeline["repo"], tmp_path / "repo")


@pytest.fixture(scope="module")
def one_worker(tiny_pipeline: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """best_params.json and the trials table of the PARALLEL study run by one worker."""
    repo = copy_repo(tiny_pipeline["repo"], tmp_path_factory.mktemp("one-worker") / "repo")
    set_params(repo, {"tune": {**PARALLEL, "workers": 1}})
    run(["dvc", "repro", "tune@mlp"], repo)
    return md5s(repo, OUTPUTS)


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(
        states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    )


def _caught_mid_study(database: str, count: int) -> int | None:
    """The study_id of a study with ``count`` finished trials and one running, read with a
    plain read-only SQLite query (about a millisecond: the window between two trials of the
    tiny data is a fraction of a second, too short for a poll through Optuna's storage)."""
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as db:
            rows = db.execute(
                "SELECT study_id, SUM(state IN ('COMPLETE', 'PRUNED')), SUM(state = 'RUNNING')"
                " FROM trials GROUP BY study_id"
            ).fetchall()
    except sqlite3.OperationalError:  # not created yet, or the tables being created
        return None
    return next((study for study, done, running in rows if done >= count and running), None)


def kill_tune_after(repo: Path, storage: str, trials: int, log: Path) -> optuna.Study:
    """Run `dvc repro tune@mlp`; SIGKILL it (dvc, the stage, its spawned workers) as soon as
    a study has ``trials`` finished trials and another running. A stage that ends first
    fails the test at once with its log."""
    database = storage.removeprefix("sqlite:///")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["dvc", "repro", "tune@mlp"],
            cwd=repo,
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline, caught = time.monotonic() + 300, None
        try:
            while caught is None and proc.poll() is None and time.monotonic() < deadline:
                caught = _caught_mid_study(database, trials) if Path(database).exists() else None
                time.sleep(0 if caught else 0.005)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert caught is not None, (
        f"no study was caught with {trials} finished trials and one running"
        f" (stage exit {proc.returncode}):\n{log.read_text()[-3000:]}"
    )
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        query = "SELECT study_name FROM studies WHERE study_id = ?"
        (name,) = db.execute(query, (caught,)).fetchone()
    return optuna.load_study(study_name=name, storage=storage)


def test_sigkilled_tune_resumes_its_study_to_exactly_n_trials(
    split_repo: Path, one_worker: dict
) -> None:
    """Two workers (tune.workers: 2) on the SQLite study, killed mid-study: the next repro
    finishes it with exactly n_trials, retrying the killed trials; no "database is locked";
    and its outputs are one worker's, byte for byte."""
    repo = split_repo
    set_params(repo, {"tune": {**PARALLEL, "workers": 2}})
    storage = f"sqlite:///{repo / '.optuna' / 'studies.db'}"
    studies = len(optuna.get_all_study_summaries(storage))
    log = repo.parent / "killed-tune.log"
    study = kill_tune_after(repo, storage, 2, log)
    before = len(finished(study))
    assert before < N_TRIALS, "the kill came too late to test a resume"
    assert (
        json.loads((repo / "models/mlp/best_params.json").read_text())["study"] != study.study_name
    )

    result = run(["dvc", "repro", "tune@mlp"], repo)  # the dead workers' trials: retried
    assert "database is locked" not in log.read_text() + result.stdout + result.stderr

    study = check_exact_parallel_study(repo, storage, N_TRIALS)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) <= 2  # the trials running at the kill
    retried = [t for t in study.trials if "failed_trial" in t.system_attrs]
    assert len(retried) == states.count(optuna.trial.TrialState.FAIL)  # each rerun, same params
    assert len(optuna.get_all_study_summaries(storage)) == studies + 1  # resumed, not restarted
    assert md5s(repo, OUTPUTS) == one_worker


def study_of(repo: Path, storage: str) -> optuna.Study:
    best = json.loads((repo / "models/mlp/best_params.json").read_text())
    return optuna.load_study(study_name=best["study"], storage=storage)


def check_exact_parallel_study(repo: Path, storage: str, n_trials: int) -> optuna.Study:
    """n_trials finished, unique numbers, each with its nested MLflow run; best = study's."""
    from mlflow.tracking import MlflowClient

    study = study_of(repo, storage)
    trials = study.get_trials()
    assert len(finished(study)) == n_trials
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in trials]
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)), numbers
    workers = {t.user_attrs["worker"] for t in finished(study)}
    assert len(workers) >= 2, f"one worker ran every trial: {workers}"
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("reprolab-digits")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("reprolab.study") == study.study_name]
    parents = [r for r in parents if r.data.tags.get("reprolab.role") == "model"]
    assert len(parents) == 1, "parallel workers created more than one parent run"
    # Each trial's run nests under the run of the execution (stage or tune-worker) that ran it.
    executions = {
        r.info.run_id
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
        and r.data.tags.get("reprolab.role") == "execution"
    }
    children = {
        r.info.run_id: r for r in runs if r.data.tags.get("mlflow.parentRunId") in executions
    }
    for trial in finished(study):
        child = children[trial.user_attrs["mlflow_run_id"]]
        assert child.data.params["trial"] == str(trial.number)
    best = json.loads((repo / "models/mlp/best_params.json").read_text())
    assert (best["lr"], best["weight_decay"]) == (
        study.best_params["lr"],
        study.best_params["weight_decay"],
    )
    # The tune stage's run that finished (a killed one ended before choosing) names it.
    chosen = [
        r.data.params["best.trial"]
        for r in runs
        if r.info.run_id in executions
        and r.data.tags["reprolab.stage"] == "tune@mlp"
        and "best.trial" in r.data.params
    ]
    assert chosen == [str(study.best_trial.number)]
    return study


def test_stage_workers_and_a_cli_worker_share_one_postgres_study(
    split_repo: Path, postgres_url: str, one_worker: dict
) -> None:
    """tune.workers: 2 plus one `reprolab tune-worker` on the same PostgreSQL study: the
    outputs of one worker on SQLite, byte for byte."""
    tiny_repo, n_trials = split_repo, N_TRIALS
    set_params(tiny_repo, {"tune": {**PARALLEL, "workers": 2}})
    env = clean_env(REPROLAB_OPTUNA_STORAGE=postgres_url, PYTHONPATH="src")
    cli = subprocess.Popen(
        [sys.executable, "-m", "reprolab.cli", "tune-worker", "mlp"],
        cwd=tiny_repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stage = run(["dvc", "repro", "tune@mlp"], tiny_repo, REPROLAB_OPTUNA_STORAGE=postgres_url)
    out, err = cli.communicate(timeout=600)
    assert cli.returncode == 0, err[-3000:]
    study = check_exact_parallel_study(tiny_repo, postgres_url, n_trials)
    assert f"study {study.study_name}" in out  # the CLI worker joined the stage's study
    assert "database is locked" not in stage.stderr + err
    assert md5s(tiny_repo, OUTPUTS) == one_worker


def test_a_resumed_study_writes_what_an_uninterrupted_one_writes(
    split_repo: Path, tmp_path: Path
) -> None:
    """One worker, killed mid-study and resumed: best_params.json and the trials table are
    byte-identical to those of a study that ran straight through (per-trial sampler seeds,
    the killed trial retried with its own params, trials numbered by their place)."""
    tiny_repo = split_repo
    set_params(tiny_repo, {"tune": {"n_trials": 4, "epochs": 6, "workers": 1}})
    straight = copy_repo(tiny_repo, tmp_path / "straight")
    run(["dvc", "repro", "tune@mlp"], straight)
    storage = f"sqlite:///{tiny_repo / '.optuna' / 'studies.db'}"
    kill_tune_after(tiny_repo, storage, 1, tiny_repo.parent / "killed.log")
    # At once: the killed trial names a dead process of this machine, so it is retried first.
    run(["dvc", "repro", "tune@mlp"], tiny_repo)
    study = optuna.load_study(
        study_name=json.loads((tiny_repo / "models/mlp/best_params.json").read_text())["study"],
        storage=storage,
    )
    assert len(study.trials) > 4, "the kill came too late: no trial was retried"
    assert md5s(tiny_repo, OUTPUTS) == md5s(straight, OUTPUTS)


ORPHAN_SCRIPT = """
import multiprocessing, os, pickle, signal, sys, time
from pathlib import Path
from reprolab.tuning.parent import spawned

if __name__ == "__main__":
    # As tune_model starts a worker; the worker's body writes the flag, then runs on.
    body = (f"import time; open({sys.argv[1]!r}, 'w').write('armed'); time.sleep(120)",)
    process = multiprocessing.get_context("spawn").Process(
        target=spawned, args=(os.getpid(), "builtins:exec", pickle.dumps(body))
    )
    process.start()
    print(process.pid, flush=True)
    if sys.argv[2] == "before-armed":  # the stage dies while the worker is starting up
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.parametrize("when", ["running", "before-armed"])
def test_spawned_tune_workers_die_with_their_stage(tmp_path: Path, when: str) -> None:
    """A SIGKILLed stage (no cleanup runs) leaves no worker training on behind it, also when
    it dies before the worker armed its death signal (the worker was reparented to PID 1 and
    ran 6 more trials: armed only after its imports, against its parent pid of then)."""
    script, flag = tmp_path / "stage.py", tmp_path / "armed"
    script.write_text(ORPHAN_SCRIPT)
    env = clean_env(PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    stage = subprocess.Popen(
        [sys.executable, str(script), str(flag), when],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    worker = int(stage.stdout.readline())
    if when == "running":
        deadline = time.monotonic() + 60
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert flag.exists(), "the worker never started"
        stage.kill()
    stage.wait()
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(worker):
        os.kill(worker, signal.SIGKILL)
        raise AssertionError(f"worker {worker} outlived its killed stage")
    assert when == "running" or not flag.exists(), "the orphan ran its body"
