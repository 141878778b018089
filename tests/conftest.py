"""Shared helpers: temporary git+DVC copies of this repo and running real commands in them."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from reprolab.core import numerics
from reprolab.core.checkout import copy_sources

# Idle OpenMP threads sleep instead of spinning: the suite runs two workers and the stages
# they start (each with params.yaml's 2 threads) on 2 cores, where libgomp's default spin-wait
# burns CPU another process needs. Scheduling only: no result depends on it. Inherited by
# every command the tests run (clean_env).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The tests' own process computes with the pipeline's default numerics, set before any test
# module imports torch (its CPU kernels are chosen when it loads), as every stage does.
numerics.apply("portable")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Small enough for a whole `dvc repro` in about a minute on 2 cores.
TINY_PARAMS = {
    "tune": {
        "n_trials": 3,
        "epochs": 2,
        "sampler_startup_trials": 2,
        "pruner": {"n_startup_trials": 1, "n_warmup_steps": 1},
    },
    "train": {"max_epochs": 3, "patience": 2},
    "baselines": {"max_rows": 400},
    "generators": {
        "dcgan": {
            "scorer": {"model": "lenet", "arch": "lenet"},
            "budget": {"n_trials": 2, "epochs": 1, "max_epochs": 2},
        }
    },
}
# Two classifiers are enough to see that one model's change leaves the other alone; the
# regressor covers the tabular data and the regression task; the GAN (scored by lenet) the
# generators.
TINY_MODELS = ("mlp", "lenet", "tabular_mlp", "dcgan")
GROUPS = ("classifiers", "regressors", "generators")


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "REPROLAB_"))
    }
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        GIT_AUTHOR_NAME="reprolab-tests",
        GIT_AUTHOR_EMAIL="tests@reprolab.invalid",
        GIT_COMMITTER_NAME="reprolab-tests",
        GIT_COMMITTER_EMAIL="tests@reprolab.invalid",
        DVC_NO_ANALYTICS="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run(
    cmd: list[str] | str, cwd: Path, check: bool = True, **env: str
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        cmd,
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        shell=isinstance(cmd, str),
        timeout=900,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{cmd} failed ({result.returncode})\n--- stdout\n{result.stdout[-4000:]}"
            f"\n--- stderr\n{result.stderr[-4000:]}"
        )
    return result


def run_in_terminal(
    cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 60, columns: int = 100
) -> tuple[int, bytes]:
    """Run ``cmd`` with stdin, stdout and stderr a pseudo-terminal of ``columns`` columns;
    return its exit status and everything it wrote to the terminal."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        start_new_session=True,
    )
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([leader], [], [], 1)[0]:
                continue
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child exited and closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        else:
            proc.kill()
            raise AssertionError(f"{cmd} ran past {timeout}s:\n{b''.join(chunks)[-2000:]!r}")
        return proc.wait(timeout=timeout), b"".join(chunks)
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            deep_merge(base[key], value)
            if isinstance(value, dict) and isinstance(base.get(key), dict)
            else value
        )
    return out


def set_params(repo: Path, override: dict, models: tuple[str, ...] | None = None) -> None:
    """Merge ``override`` into the repo's params.yaml; keep only ``models`` if given
    (model names of any group: classifiers, regressors, generators)."""
    path = repo / "params.yaml"
    params = deep_merge(yaml.safe_load(path.read_text()), override)
    if models is not None:
        for group in GROUPS:
            params[group] = {n: s for n, s in params.get(group, {}).items() if n in models}
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def make_repo(
    dest: Path, params: dict | None = None, models: tuple[str, ...] | None = None
) -> Path:
    """A git repo holding this checkout's source files (working tree, not just HEAD)."""
    dest.mkdir(parents=True)
    copy_sources(REPO, dest)
    if params or models:
        set_params(dest, params or {}, models)
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "init"], dest)
    return dest


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def md5s(repo: Path, patterns: list[str]) -> dict[str, str]:
    out = {}
    for pattern in patterns:
        for path in sorted(repo.glob(pattern)):
            out[path.relative_to(repo).as_posix()] = hashlib.md5(path.read_bytes()).hexdigest()
    return out


GOLDEN = Path(__file__).parent / "golden" / "tiny_outputs.json"


def output_hashes(repo: Path, stages: set[str] | None = None) -> dict[str, str]:
    """{path: md5} of the outputs ``repo``'s dvc.lock records (of ``stages``, or all): what
    tests/golden/tiny_outputs.json holds. A study's name hashes the code it runs, so files that
    record it are hashed without it: an edit that changes no number keeps the golden file."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    hashes = {
        out["path"]: out["md5"]
        for name, stage in lock["stages"].items()
        if stages is None or name in stages
        for out in stage["outs"]
    }
    for path in hashes:
        if path.endswith(("best_params.json", "model.json")):
            record = json.loads((repo / path).read_text())
            record.pop("study", None)
            text = json.dumps(record, sort_keys=True).encode()
            hashes[path] = "without study: " + hashlib.md5(text).hexdigest()
    return hashes


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", TINY_PARAMS, TINY_MODELS)


def _build_tiny_pipeline(shared: Path) -> Path:
    """Run the TINY pipeline once in ``shared`` (whichever process comes first; the others
    wait on the lock); return the record of its first `dvc repro`."""
    from reprolab.core.io import file_lock

    done = shared / "first.json"
    with file_lock(f"{shared}.lock"):
        if not done.exists():
            first = run(["dvc", "repro"], make_repo(shared / "repo", TINY_PARAMS, TINY_MODELS))
            record = {k: getattr(first, k) for k in ("args", "stdout", "stderr")}
            done.write_text(json.dumps(record))
    return done


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real `dvc repro` of the TINY pipeline, shared by every module that only reads it
    (a test that changes params works on ``copy_repo`` of it). Under pytest-xdist it runs
    once for all workers (started by the controller with the session, see pytest_configure)
    and every worker reads its own copy (the tests run dvc in it, and two processes would
    compete for the repo's lock)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        repo = make_repo(tmp_path_factory.mktemp("e2e") / "repo", TINY_PARAMS, TINY_MODELS)
        return {"repo": repo, "first": run(["dvc", "repro"], repo)}
    shared = tmp_path_factory.getbasetemp().parent / "tiny-pipeline"
    done = _build_tiny_pipeline(shared)
    first = subprocess.CompletedProcess(returncode=0, **json.loads(done.read_text()))
    repo = copy_repo(shared / "repo", tmp_path_factory.mktemp("e2e") / "repo")
    # Its MLflow store as if the pipeline had run here (the stages' own repair of a copy).
    from reprolab.tracking.store import repair_moved_store

    repair_moved_store(f"sqlite:///{repo / 'mlflow.db'}")
    return {"repo": repo, "first": first}


_BUILDING: list = []


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """The xdist controller of a whole-suite run starts the tiny pipeline at once, in a
    thread, so that the workers find it built (or half built) when a test first needs it,
    instead of one of them building it while the other waits."""
    import threading

    whole_suite = config.args_source == pytest.Config.ArgsSource.TESTPATHS and not (
        config.option.keyword or config.option.markexpr
    )
    controller = getattr(config, "workerinput", None) is None
    if controller and whole_suite and getattr(config.option, "numprocesses", None):
        shared = config._tmp_path_factory.getbasetemp() / "tiny-pipeline"
        thread = threading.Thread(target=_build_tiny_pipeline, args=(shared,), daemon=True)
        thread.start()
        _BUILDING.append(thread)


def pytest_unconfigure(config: pytest.Config) -> None:
    for thread in _BUILDING:  # no build left running after the session
        thread.join()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files whose tests need the tiny pipeline last, so that xdist's workers start with the
    others while it is being built."""
    needs = {item.path for item in items if "tiny_pipeline" in item.fixturenames}
    items.sort(key=lambda item: item.path in needs)


def copy_repo(repo: Path, dest: Path) -> Path:
    """A full copy (git, DVC cache, MLflow and Optuna stores) to change without side effects."""
    shutil.copytree(repo, dest, symlinks=True)
    return dest


def mlflow_runs(repo: Path, model: str, experiment: str = "reprolab-digits") -> tuple:
    """The client of ``repo``'s MLflow store, and the runs of ``model``'s current study (the
    one models/<model>/best_params.json names) in ``experiment``, by run name: its parent,
    stage executions (``<stage> #<n>``) and trials."""
    from mlflow.tracking import MlflowClient

    study = json.loads((repo / "models" / model / "best_params.json").read_text())["study"]
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs(
        [found.experiment_id], f"tags.`reprolab.study` = '{study}'", max_results=10000
    )
    return client, {r.info.run_name: r for r in runs}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(cmd: list[str], cwd: Path, ready_url: str, timeout: float = 180, **env: str):
    """Start a server (own process group), wait until ``ready_url`` answers 200, yield,
    then kill the whole group. Fails with the server's log if it never becomes ready."""
    import signal
    import time
    import urllib.request

    log = cwd.parent / f"server-{Path(cmd[0]).name}-{os.getpid()}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=clean_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"{cmd} exited {proc.returncode}:\n{log.read_text()}")
                try:
                    with urllib.request.urlopen(ready_url, timeout=5) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{ready_url} not ready in {timeout}s:\n{log.read_text()}")
                time.sleep(1)
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)


@contextlib.contextmanager
def postgres_server(databases: tuple[str, ...]) -> Iterator[str]:
    """A real PostgreSQL server (reprolab.teamstack.postgres, as `make team-stack` starts
    it): a temporary data dir, trust auth, a free port on 127.0.0.1, as the `postgres` user
    when run as root (postgres refuses root). Yields its URL without a database name.
    Skips, saying why, only where no server can be started."""
    import tempfile

    from reprolab.teamstack import StackError, postgres

    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed (it is in the dev dependencies)")
    # Not under pytest's basetemp: its 0700 folders are closed to the postgres user.
    folder = Path(tempfile.mkdtemp(prefix="reprolab-pg-"))
    try:
        with contextlib.ExitStack() as stack:
            try:  # tests need no durability: fsync off
                url = stack.enter_context(postgres(folder, free_port(), databases, durable=False))
            except StackError as err:
                pytest.skip(f"PostgreSQL could not be started: {err}")
            yield url
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server for the session (postgres_server), database `optuna`."""
    with postgres_server(("optuna",)) as url:
        yield f"{url}/optuna"


@pytest.fixture
def digits_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace (the cwd) holding params.yaml and the digits image splits, as the
    download and split stages write them."""
    from reprolab.core import paths
    from reprolab.data.fetch import fetch_dataset, load_raw
    from reprolab.data.split import write_splits

    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    fetch_dataset("digits", paths.RAW / "digits")
    raw = load_raw("digits", paths.RAW / "digits")
    write_splits(raw, paths.splits_dir("image"), 0.15, 0.15, seed=0)
    return tmp_path


def log_toy_version(folder: Path, name: str, spec, about: dict, example, logged: dict):
    """A tiny model saved as the train stage saves it and registered as ``toy-<name>`` with
    the pipeline's own functions (into the current MLflow store); returns the model."""
    from types import SimpleNamespace

    import torch

    from reprolab.learn.checkpoints import save_model
    from reprolab.learn.serving import SERVED_CODE, Served, answer
    from reprolab.models._base import build_model
    from reprolab.tracking.models import FromCode, log_final_model

    torch.manual_seed(0)
    model = build_model(spec).eval()
    md5 = save_model(model, spec, folder, {"study": "s", "model": name, **about})
    served = Served(model, spec.input_shape, about["task"]).eval()
    ctx = SimpleNamespace(
        dataset="toy",
        group="classifiers",
        name=name,
        device=torch.device("cpu"),
        spec=SimpleNamespace(model_dump=lambda mode: {"arch": spec.arch}),
    )
    log_final_model(
        ctx,
        {"study": "s"},
        {},
        history=[],
        logged=logged,
        served=FromCode(SERVED_CODE, answer(served, example, about)),
        example=example,
        about=about,
        weights_md5=md5,
        folder=folder,
    )
    return model
