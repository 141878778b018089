"""MLflow tracking on a real SQLite store: a copied or moved workspace logs into its own
mlartifacts/ (a temp experiment, pointed at the workspace's store, keeps the workspace's);
a rerun with the same weights reuses their registered version; parent runs are named after
the DVC experiment or the commit."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from reprolab.tracking.champion import promote_champion
from reprolab.tracking.lineage import MD5_TAG, PATH_TAG, code_diff, log_inputs
from reprolab.tracking.models import VERSION_TAG, log_final_model
from reprolab.tracking.runs import Tracker, experiment_name
from reprolab.tracking.store import repair_moved_store

NAME = "toy-mlp"  # registered_name("toy", "mlp")


def _workspace(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in ``folder`` (a DVC workspace root) with its own store, as a stage there does."""
    (folder / ".dvc").mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(folder)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    return folder


def _log(seed: int, study: str = "s1", sha: str = "0" * 40, name: str = "mlp") -> str:
    """Train nothing: a seeded tiny network logged the pipeline's way; returns its md5."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 2).eval()
    md5 = hashlib.md5(b"".join(p.detach().numpy().tobytes() for p in model.parameters()))
    ctx = SimpleNamespace(
        dataset="toy",
        group="classifiers",
        name=name,
        device=torch.device("cpu"),
        spec=SimpleNamespace(model_dump=lambda mode: {"arch": "mlp"}),
    )
    log_final_model(
        ctx,
        {"study": study},
        {"reprolab.git_sha": sha},
        history=[{"epoch": 1, "val_accuracy": 0.5}],
        logged={"val_accuracy": 0.5 + seed / 100},
        served=model,
        example=np.ones((2, 4), np.float32),
        about={"task": "classification"},
        weights_md5=md5.hexdigest(),
    )
    return md5.hexdigest()


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _experiment_id(client: MlflowClient) -> str:
    return client.get_experiment_by_name(experiment_name("toy")).experiment_id


def _storage(version: str) -> str:
    """Where the registry reads the version's files from."""
    return MlflowClient().get_model_version_download_uri(NAME, version)


def test_a_copied_workspace_logs_into_its_own_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _workspace(tmp_path / "a", monkeypatch)
    _log(seed=1)
    assert _storage("1").startswith((first / "mlartifacts").as_uri() + "/")
    copy = tmp_path / "b"
    shutil.copytree(first, copy)  # `cp -r a b`: the store and its artifacts along
    before = _files(first)
    db = (first / "mlflow.db").read_bytes()

    _workspace(copy, monkeypatch)
    _log(seed=2)
    client = MlflowClient()
    assert client.get_experiment_by_name(experiment_name("toy")).artifact_location.startswith(
        (copy / "mlartifacts").as_uri() + "/"
    )
    for version in ("1", "2"):  # the new version, and the one whose files came along
        location = _storage(version)
        assert location.startswith((copy / "mlartifacts").as_uri() + "/"), location
    new = _files(copy / "mlartifacts") - {
        p.removeprefix("mlartifacts/") for p in before if p.startswith("mlartifacts/")
    }
    assert any(p.endswith("MLmodel") for p in new), new
    assert _files(first) == before and (first / "mlflow.db").read_bytes() == db

    shutil.rmtree(first)  # as after `mv a b`: every version reads from b alone
    for version in ("1", "2"):
        assert mlflow.models.get_model_info(f"models:/{NAME}/{version}").signature is not None


def test_a_store_named_from_another_folder_keeps_its_artifact_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `dvc exp run --temp` (or `reprolab verify`) does: the stage runs in a copy of the
    workspace, pointed at the workspace's store: artifacts go beside that store."""
    workspace = _workspace(tmp_path / "a", monkeypatch)
    _log(seed=1)
    temp = workspace / ".dvc" / "tmp" / "exps" / "tmp1234"
    _workspace(temp, monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workspace / 'mlflow.db'}")
    _log(seed=2)
    fresh = Tracker("other", "mlp", "s1")  # an experiment first created from the copy
    client = MlflowClient()
    root = (workspace / "mlartifacts").as_uri() + "/"
    assert client.get_experiment(fresh.experiment_id).artifact_location.startswith(root)
    assert client.get_experiment_by_name(experiment_name("toy")).artifact_location.startswith(root)
    assert _storage("1").startswith(root) and _storage("2").startswith(root)
    assert not (temp / "mlartifacts").exists()


def test_a_store_copied_without_its_artifacts_keeps_reading_them_where_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only mlflow.db copied: new runs log beside the copy, an old run's files stay readable
    in the folder they never left; a server's URI is never repaired."""
    first = _workspace(tmp_path / "a", monkeypatch)
    tracker = Tracker("toy", "mlp", "s1")
    old = tracker.parent_run_id({})
    tracker.client.log_text(old, "old", "notes/old.txt")
    copy = tmp_path / "b"
    (copy / ".dvc").mkdir(parents=True)
    shutil.copy2(first / "mlflow.db", copy / "mlflow.db")

    _workspace(copy, monkeypatch)
    tracker = Tracker("toy", "mlp", "s2")
    new = tracker.parent_run_id({})
    tracker.client.log_text(new, "new", "notes/new.txt")
    client = MlflowClient()
    assert client.get_run(old).info.artifact_uri.startswith(first.as_uri() + "/")
    assert client.get_run(new).info.artifact_uri.startswith(copy.as_uri() + "/mlartifacts/")
    assert client.download_artifacts(old, "notes/old.txt", str(tmp_path))
    assert not any(p.endswith("new.txt") for p in _files(first))
    assert any(p.endswith("notes/new.txt") for p in _files(copy / "mlartifacts"))
    assert repair_moved_store("http://127.0.0.1:5000") == []
    assert repair_moved_store(f"sqlite:///{copy / 'mlflow.db'}") == []  # done once


def test_the_same_weights_map_to_one_registered_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _workspace(tmp_path, monkeypatch)
    same = _log(seed=1, study="s1")
    assert _log(seed=1, study="s2") == same  # a rerun (a new study) training the same weights
    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{NAME}'")
    assert [str(v.version) for v in versions] == ["1"]
    parents = client.search_runs([_experiment_id(client)])
    runs = {r.data.tags["reprolab.study"]: r for r in parents}
    for study in ("s1", "s2"):  # both runs logged their metrics and name the one version
        assert runs[study].data.tags[VERSION_TAG] == f"models:/{NAME}/1"
        assert runs[study].data.metrics["val_accuracy"] == pytest.approx(0.51)

    other = _log(seed=2, study="s3")
    assert other != same
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 2
    assert promote_champion("toy", "mlp", same, ["mlp"]) == (f"models:/{NAME}/1", None)
    assert client.get_model_version_by_alias(NAME, "champion").tags["weights_md5"] == same
    assert promote_champion("toy", "mlp", other, ["mlp"]) == (f"models:/{NAME}/2", None)


def test_a_second_version_of_the_same_weights_registered_at_once_is_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workspaces on one tracking server that register the same weights at the same
    moment (no lock spans them: both found none) keep one version, the older."""
    from reprolab.tracking.models import _register

    _workspace(tmp_path, monkeypatch)
    same = _log(seed=1)
    client = MlflowClient()
    first = client.get_model_version(NAME, "1")
    # The other workspace's registration: the same weights, registered as if none were there.
    assert _register(client, first.source, NAME, {"weights_md5": same}) == "1"
    assert [str(v.version) for v in client.search_model_versions(f"name = '{NAME}'")] == ["1"]
    other = _log(seed=2)  # the older version of other weights is the one kept
    versions = {v.tags["weights_md5"]: str(v.version) for v in client.search_model_versions("")}
    assert _register(client, first.source, NAME, {"weights_md5": other}) == versions[other]
    kept = sorted(v.tags["weights_md5"] for v in client.search_model_versions(""))
    assert kept == sorted([same, other])


def test_a_model_taken_out_of_params_keeps_no_champion_alias(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An experiment adds model foo, which becomes champion; foo leaves params.yaml again and
    the report's promotion takes the alias off it too, though foo is no longer listed."""
    _workspace(tmp_path, monkeypatch)
    mlp, foo = _log(seed=1), _log(seed=2, name="foo")
    client = MlflowClient()
    assert promote_champion("toy", "foo", foo, ["mlp", "foo"], "classifiers")[1] is None
    assert promote_champion("toy", "mlp", mlp, ["mlp"], "classifiers")[1] is None
    holders = [m.name for m in client.search_registered_models() if "champion" in m.aliases]
    assert holders == [NAME]


def _commit(folder: Path, message: str, file: str = "notes.txt", text: str = "") -> str:
    """A commit of ``file`` in ``folder``'s git repository (created if need be); its sha."""
    git = ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t"]
    if not (folder / ".git").exists():
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    (folder / file).write_text(text or message)
    subprocess.run([*git, "add", file], check=True)
    subprocess.run([*git, "commit", "-q", "-m", message], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    return head.stdout.strip()


def _made_elsewhere(version: str, sha: str, dirty: bool = False) -> None:
    """Version ``version`` as another workspace sharing the server registered it, holding
    the alias."""
    client = MlflowClient()
    for key, value in {
        "workspace": "other-host:/work/clone",
        "git_sha": sha,
        "git_dirty": str(dirty).lower(),
    }.items():
        client.set_model_version_tag(NAME, version, key, value)
    client.set_registered_model_alias(NAME, "champion", version)


def _champion() -> str:
    return str(MlflowClient().get_model_version_by_alias(NAME, "champion").version)


def test_champion_only_moves_forward_on_a_shared_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workspaces sharing one tracking server: a workspace moves the alias off its own earlier
    result, a result committed in its history, or a clean result of an older commit; never
    off another workspace's newer, diverged, unfetched or uncommitted result."""
    _workspace(tmp_path, monkeypatch)
    old = _commit(tmp_path, "old")
    assert promote_champion("toy", "mlp", _log(seed=1, sha=old), ["mlp"])[1] is None
    new = _commit(tmp_path, "new")
    mine = _log(seed=2, sha=new)  # v2: this workspace's result
    assert promote_champion("toy", "mlp", mine, ["mlp"]) == (f"models:/{NAME}/2", None)

    def held_from(version: str, where: str = "other-host:/work/clone") -> str:
        uri, held = promote_champion("toy", "mlp", mine, ["mlp"])
        assert uri == f"models:/{NAME}/2" and _champion() == version, held
        assert held.startswith(f"champion stays on models:/{NAME}/{version}: "), held
        assert f"made in {where};" in held and "git pull" in held, held
        return held

    # Another clone's result of a commit this clone has not fetched.
    _log(seed=3)
    _made_elsewhere("3", sha="f" * 40)
    assert "which this clone does not have" in held_from("3")
    # Another clone's uncommitted result made from this same commit (the clone then commits
    # and pushes it): held until this clone has that commit, whose dvc.lock holds the weights.
    theirs = _log(seed=4)
    _made_elsewhere("4", sha=new, dirty=True)
    assert "another workspace's result of this commit" in held_from("4")
    _commit(tmp_path, "their result, pulled", "dvc.lock", f"outs:\n- md5: {theirs}\n")
    assert promote_champion("toy", "mlp", mine, ["mlp"]) == (f"models:/{NAME}/2", None)
    # A clean result of an older commit moves on; an uncommitted one of it does not.
    _log(seed=5)
    _made_elsewhere("5", sha=old)
    assert promote_champion("toy", "mlp", mine, ["mlp"])[1] is None and _champion() == "2"
    _made_elsewhere("5", sha=old, dirty=True)
    assert "an uncommitted result of commit" in held_from("5")
    # On a branch diverged from the holder's commit: held.
    _made_elsewhere("5", sha=new)
    subprocess.run(["git", "-C", str(tmp_path), "checkout", "-q", "-b", "side", old], check=True)
    _commit(tmp_path, "side")
    assert "not an ancestor of HEAD" in held_from("5")
    # A version registered before versions said where they were made: by commit alone.
    MlflowClient().delete_model_version_tag(NAME, "5", "workspace")
    assert "not an ancestor of HEAD" in held_from("5", where="another workspace")
    subprocess.run(["git", "-C", str(tmp_path), "checkout", "-q", "main"], check=True)
    assert promote_champion("toy", "mlp", mine, ["mlp"])[1] is None and _champion() == "2"


def test_parent_runs_are_named_after_the_dvc_experiment_or_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _workspace(tmp_path, monkeypatch)
    code_diff.cache_clear()  # read once per process: here outside git, no diff
    tracker = Tracker("toy", "mlp", "toy.mlp.0123456789ab")
    client = MlflowClient()
    plain = tracker.parent_run_id({"reprolab.git_sha": "abcdef0123456789" * 2 + "abcdef01"})
    assert client.get_run(plain).info.run_name == "mlp@abcdef0"

    monkeypatch.setenv("DVC_EXP_NAME", "bold-pump")
    run_id = Tracker("toy", "mlp", "toy.mlp.ba9876543210").parent_run_id({})
    assert client.get_run(run_id).info.run_name == "mlp@bold-pump"

    monkeypatch.delenv("DVC_EXP_NAME")
    outside_git = Tracker("toy", "mlp", "toy.mlp.fedcba987654").parent_run_id({})
    assert client.get_run(outside_git).info.run_name == "mlp@fedcba987654"


def test_a_store_fault_is_never_taken_for_no_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check guarding the alias must not be skipped: a store that does not answer raises,
    where "no such model" or "no such alias" mean nobody holds it."""
    from mlflow.exceptions import MlflowException

    from reprolab.tracking.champion import _alias_holder

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    down = MlflowClient("http://127.0.0.1:9")  # the discard port: nothing answers
    with pytest.raises(MlflowException):
        _alias_holder(down, "toy-mlp")


def test_inputs_another_workspace_logged_first_are_found_not_inserted_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workspaces on one server log the same split inputs into their shared parent run
    at once; MLflow checks, then inserts, so the later insert fails (PostgreSQL's words
    below, from a CI run). The loser tries again, finds the inputs and inserts nothing;
    any other error goes up at once."""
    _workspace(tmp_path, monkeypatch)
    tracker = Tracker("toy", "mlp", "s1")
    run_id = tracker.start_child(tracker.parent_run_id({}), "tune@mlp #1", {}, "execution")
    tags = {f"{MD5_TAG}train": "a" * 32, f"{PATH_TAG}train": "data/splits/image/train.npz"}
    client, real, calls = tracker.client, tracker.client.log_inputs, []
    lost = (
        "RestException: BAD_REQUEST: (psycopg2.errors.UniqueViolation) duplicate key value"
        ' violates unique constraint "dataset_pk"'
    )

    def racing(run: str, datasets: list) -> None:
        calls.append(len(datasets))
        if len(calls) == 1:  # the other workspace's insert lands first
            real(run, datasets=datasets)
            raise mlflow.exceptions.MlflowException(lost)
        real(run, datasets=datasets)

    monkeypatch.setattr(client, "log_inputs", racing)
    log_inputs(client, run_id, "toy", tags)
    assert calls == [1]  # the retry found the input held: nothing inserted twice
    assert [d.dataset.name for d in client.get_run(run_id).inputs.dataset_inputs] == ["toy-train"]

    def broken(run: str, datasets: list) -> None:
        raise mlflow.exceptions.MlflowException("connection refused")

    monkeypatch.setattr(client, "log_inputs", broken)
    with pytest.raises(mlflow.exceptions.MlflowException, match="connection refused"):
        log_inputs(client, run_id, "toy", tags | {f"{MD5_TAG}train": "b" * 32})
