"""The team stack, started for real: PostgreSQL and `mlflow server` with proxied artifacts
(reprolab.teamstack, as `make team-stack` starts them), and two clones running the tiny
pipeline against it at the same time (MLFLOW_TRACKING_URI the server, tune.storage the
PostgreSQL database, one DVC remote folder), checked against one clone that runs alone on its
own workspace stores (mlflow.db, .optuna/)."""

from __future__ import annotations

import collections
import hashlib
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import (
    clean_env,
    copy_repo,
    free_port,
    postgres_server,
    run,
    set_params,
    stages_run,
)

# One classifier and the regressor: two datasets, two model groups, two champions.
MODELS = ("mlp", "tabular_mlp")
REGISTERED = {"digits-mlp", "diabetes-tabular_mlp"}
PREPARED = ("download", "split", "baselines", "evaluate_baselines")


@pytest.fixture(scope="module")
def team_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """PostgreSQL holding the `mlflow` and `optuna` databases, and `mlflow server` on a free
    port with the first as its backend store, proxying artifacts into a folder; yielded once
    its /health answers."""
    from reprolab.teamstack import mlflow_server

    folder = tmp_path_factory.mktemp("team")
    log = folder / "mlflow-server.log"
    with (
        postgres_server(("mlflow", "optuna")) as database,
        mlflow_server(
            f"{database}/mlflow", folder / "artifacts", "127.0.0.1", free_port(), log
        ) as url,
    ):
        yield {
            "tracking": url,
            "storage": f"{database}/optuna",
            "artifacts": folder / "artifacts",
            "remote": folder / "dvc-remote",
            "log": log,
        }


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _prepared(alone: Path, dest: Path) -> Path:
    """A copy of the single clone's repo for MODELS, its data stages (PREPARED) done and
    committed, every other stage not run yet (outputs and dvc.lock entries removed), and no
    MLflow or Optuna store: a team's workspace on a commit whose data is ready."""
    repo = copy_repo(alone, dest)
    for store in ("mlflow.db", "mlflow.db.lock", "mlartifacts", ".optuna"):
        _remove(repo / store)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    for name in [n for n in lock["stages"] if n.split("@")[0] not in PREPARED]:
        for out in lock["stages"].pop(name)["outs"]:
            _remove(repo / out["path"])
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    set_params(repo, {}, MODELS)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "data ready"], repo)
    return repo


def _start(repo: Path, **env: str) -> tuple[subprocess.Popen, Path]:
    log = repo.parent / f"{repo.name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dvc"), "repro"],
            cwd=repo,
            env=clean_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, log


def _finish(proc: subprocess.Popen, log: Path) -> str:
    proc.wait(timeout=600)
    output = log.read_text()
    assert proc.returncode == 0, f"{log.stem}: dvc repro exited {proc.returncode}\n{output[-4000:]}"
    return output


def _outputs(repo: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """{path: md5} of every output the repo's dvc.lock records (but the ``skip`` stages')."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {
        o["path"]: o["md5"] for n, s in lock["stages"].items() if n not in skip for o in s["outs"]
    }


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _tracked(uri: str) -> dict:
    """What a tracking store holds of MODELS: runs counted by (experiment, model, role), their
    statuses, the versions of each registered model, each champion version and where each
    experiment keeps its artifacts."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs: collections.Counter = collections.Counter()
    statuses: collections.Counter = collections.Counter()
    locations = {}
    for experiment in client.search_experiments(filter_string="name LIKE 'reprolab-%'"):
        locations[experiment.name] = experiment.artifact_location
        for found in client.search_runs([experiment.experiment_id], max_results=10000):
            tags = found.data.tags
            if tags.get("reprolab.model") in MODELS:
                runs[experiment.name, tags["reprolab.model"], tags.get("reprolab.role")] += 1
                statuses[found.info.status] += 1
    versions, champions = {}, {}
    for name in REGISTERED:
        found = client.search_model_versions(f"name = '{name}'")
        versions[name] = sorted(int(v.version) for v in found)
        if found:
            aliases = client.get_registered_model(name).aliases
            if "champion" in aliases:
                champions[name] = client.get_model_version(name, aliases["champion"])
    return {
        "runs": dict(runs),
        "statuses": statuses,
        "versions": versions,
        "champions": champions,
        "locations": locations,
    }


def _trials(url: str) -> dict[str, collections.Counter]:
    """Per study of MODELS in an Optuna storage, how many trials it has in each state."""
    import optuna

    storage = optuna.storages.RDBStorage(url)
    prefixes = tuple(f"{name.replace('-', '.', 1)}." for name in REGISTERED)
    try:
        return {
            name: collections.Counter(
                t.state.name
                for t in optuna.load_study(study_name=name, storage=storage).get_trials()
            )
            for name in optuna.study.get_all_study_names(storage)
            if name.startswith(prefixes)
        }
    finally:
        storage.remove_session()
        storage.engine.dispose()


@pytest.mark.slow
def test_two_clones_share_the_team_stack_at_once(
    team_stack: dict, tiny_pipeline: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The single clone is the session's tiny pipeline run (TINY_MODELS, workspace stores):
    a model's outputs do not depend on the other models params.yaml names."""
    alone_repo = tiny_pipeline["repo"]
    origin = _prepared(alone_repo, tmp_path / "origin")
    clones = {name: copy_repo(origin, tmp_path / name) for name in ("a", "b")}
    remote = team_stack["remote"]
    for repo in clones.values():  # what docs/guide.md tells a team's workspace to set
        set_params(repo, {"tune": {"storage": team_stack["storage"]}})
        run(["dvc", "remote", "add", "--local", "-d", "shared", str(remote)], repo)
    started = {
        name: _start(repo, MLFLOW_TRACKING_URI=team_stack["tracking"])
        for name, repo in clones.items()
    }
    output = {name: _finish(*started[name]) for name in started}

    for name, repo in clones.items():
        assert len(stages_run(output[name])) == 1 + 3 * len(MODELS), output[name]
        for fault in ("database is locked", "Traceback", "champion stays"):
            assert fault not in output[name], f"{name}: {fault}\n{output[name][-4000:]}"
        # Nothing of the stores in the workspace: the server and PostgreSQL hold it all.
        for local in ("mlflow.db", "mlartifacts", ".optuna"):
            assert not (repo / local).exists(), f"{name} wrote {local}"

    # Runs, versions and trials: what one clone alone makes, none lost or doubled.
    alone = _tracked(f"sqlite:///{alone_repo / 'mlflow.db'}")
    team = _tracked(team_stack["tracking"])
    # Each clone's stages are executions of their own; the parents and trials are shared.
    twice = {k: v * (2 if k[2] == "execution" else 1) for k, v in alone["runs"].items()}
    assert team["runs"] == twice
    assert set(team["statuses"]) <= {"FINISHED", "KILLED"}, team["statuses"]
    assert sum(team["statuses"].values()) == sum(twice.values())
    assert team["versions"] == alone["versions"] == {name: [1] for name in REGISTERED}
    team_trials = _trials(team_stack["storage"])
    alone_trials = _trials(f"sqlite:///{alone_repo / '.optuna/studies.db'}")
    assert len(team_trials) == len(MODELS), team_trials
    assert {s: c.total() for s, c in team_trials.items()} == {
        s: alone_trials[s].total() for s in team_trials
    }
    for study, states in team_trials.items():
        assert set(states) <= {"COMPLETE", "PRUNED"}, f"{study}: {states}"

    # Artifacts go through the server (mlflow-artifacts:) into its folder, and read back.
    assert all(v.startswith("mlflow-artifacts:") for v in team["locations"].values()), team
    assert any(team_stack["artifacts"].rglob("MLmodel")), "no model in the server's folder"
    from reprolab.tracking.logged_files import download_extra_files

    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_stack["tracking"])
    for model, registered in (("mlp", "digits-mlp"), ("tabular_mlp", "diabetes-tabular_mlp")):
        fetched = tmp_path / "fetched" / model
        fetched.mkdir(parents=True)
        download_extra_files(f"models:/{registered}@champion", ["model.pt"], fetched)
        # champion: the registered version of each group's best network, the clones' result.
        weights = {_md5(repo / f"models/{model}/model.pt") for repo in clones.values()}
        assert weights == {_md5(fetched / "model.pt")}
        holder = team["champions"][registered]
        assert {holder.tags["weights_md5"]} == weights
        assert holder.tags["workspace"].split(":", 1)[1] in {str(r) for r in clones.values()}
    assert set(team["champions"]) == set(alone["champions"]) == REGISTERED

    # One study, two workers: both clones write its one result.
    assert _outputs(clones["a"]) == _outputs(clones["b"])
    # The shared DVC remote: pushed from one clone, pulled into the other's emptied cache.
    run(["dvc", "push"], clones["a"])
    cache = clones["a"] / ".dvc" / "cache" / "files" / "md5"
    outputs = _outputs(clones["b"]).items()
    cached = [p for p, md5 in outputs if (cache / md5[:2] / md5[2:]).exists()]
    assert any(p.endswith("model.pt") for p in cached), cached
    shutil.rmtree(clones["b"] / ".dvc" / "cache")
    for path in cached:
        _remove(clones["b"] / path)
    run(["dvc", "pull"], clones["b"])
    assert "up to date" in run(["dvc", "status"], clones["b"]).stdout
    for path in cached:
        if (clones["a"] / path).is_file():
            assert _md5(clones["b"] / path) == _md5(clones["a"] / path), path

    # Both clones' DVC outputs are a single clone's bits (the report also names the other models).
    expected = _outputs(alone_repo)
    for name, repo in clones.items():
        found = _outputs(repo, skip=("report",))
        differ = sorted(p for p in found if found[p] != expected.get(p))
        assert not differ, f"{name}: outputs that differ from the clone run alone: {differ}"


def test_a_taken_port_is_one_line_naming_it(tmp_path: Path) -> None:
    """Both ports are checked before anything starts; the stack's folder stays empty."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flag in ("--port", "--pg-port"):
            cmd = [sys.executable, "-m", "reprolab.teamstack", "--folder", str(tmp_path / "s")]
            cmd += ["--port", str(free_port()), "--pg-port", str(free_port()), flag, str(port)]
            result = run(cmd, tmp_path, check=False)
            assert result.returncode == 1, result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and f"port {port} on 127.0.0.1 is taken" in lines[0], lines
            assert not (tmp_path / "s" / "postgres" / "data").exists()


def test_postgresql_not_installed_is_one_line(tmp_path: Path) -> None:
    from reprolab.teamstack import StackError, postgres_bindir

    with pytest.MonkeyPatch.context() as patch, pytest.raises(StackError) as raised:
        patch.setenv("PATH", str(tmp_path))  # no pg_ctl on it, nor in an empty Debian folder
        postgres_bindir(tmp_path / "postgresql")
    assert str(raised.value).startswith("PostgreSQL is not installed")
    assert "apt-get install postgresql" in str(raised.value)
