"""`reprolab verify`: a real rerun of locked stages in a scratch copy, compared with dvc.lock;
identical on a fresh result, a named difference (with the largest numeric difference of a JSON
metric) when an output differs, and the workspace untouched either way."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import BIN, copy_repo, md5s, run
from mlflow.tracking import MlflowClient

from reprolab.cli import main
from reprolab.core.errors import ReprolabError
from reprolab.verify import _compare, dir_md5, largest_difference, verify

STAGES = ["split@image", "evaluate@mlp"]


def _registered_versions(repo: Path) -> int:
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    return len(MlflowClient().search_model_versions())


@pytest.mark.slow
def test_verify_reruns_locked_stages_identically_without_touching_the_workspace(
    tiny_pipeline: dict, tmp_path: Path
) -> None:
    repo = copy_repo(tiny_pipeline["repo"], tmp_path / "repo")
    before = md5s(repo, ["dvc.lock", "data/splits/image/*", "metrics/mlp/*", "plots/*/*"])
    versions = _registered_versions(repo)
    result = run(["reprolab", "verify", *STAGES], repo)
    lines = result.stdout.splitlines()
    assert "metrics/mlp/test.json  identical" in result.stdout, result.stdout
    assert sum(line.endswith("  identical") for line in lines) == 6, result.stdout
    assert lines[-1] == "6 of 6 outputs identical to dvc.lock"
    assert md5s(repo, ["dvc.lock", "data/splits/image/*", "metrics/mlp/*", "plots/*/*"]) == before
    # Its MLflow runs went to a separate experiment; the registry did not grow.
    client = MlflowClient()
    assert client.get_experiment_by_name("reprolab-digits-verify") is not None
    assert _registered_versions(repo) == versions


@pytest.mark.slow
def test_verify_names_an_output_that_differs_and_exits_1(
    tiny_pipeline: dict, tmp_path: Path
) -> None:
    """As on a machine whose result differs: dvc.lock and the workspace's test metrics say
    accuracy 0.5; the rerun computes the real one."""
    repo = copy_repo(tiny_pipeline["repo"], tmp_path / "repo")
    metrics_path = repo / "metrics/mlp/test.json"
    metrics = json.loads(metrics_path.read_text())
    true_accuracy = metrics["accuracy"]
    metrics["accuracy"] = 0.5
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    for out in lock["stages"]["evaluate@mlp"]["outs"]:
        if out["path"] == "metrics/mlp/test.json":
            out["md5"] = md5s(repo, ["metrics/mlp/test.json"])["metrics/mlp/test.json"]
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    result = run(["reprolab", "verify", "evaluate@mlp"], repo, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if "metrics/mlp/test.json" in x)
    assert " differs " in line
    assert f"largest difference {abs(true_accuracy - 0.5):.3g}" in line
    assert "plots/confusion/mlp.csv  identical" in result.stdout
    assert json.loads(metrics_path.read_text())["accuracy"] == 0.5  # the workspace untouched


@pytest.mark.slow
def test_verify_refuses_an_unknown_stage_in_one_line(tiny_pipeline: dict) -> None:
    result = run(["reprolab", "verify", "train@nosuch"], tiny_pipeline["repo"], check=False)
    assert result.returncode != 0
    assert result.stderr.strip().startswith("error: not in dvc.lock: train@nosuch;")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_largest_difference_and_dvc_dir_hash(tiny_pipeline: dict) -> None:
    assert largest_difference({"a": 1.0, "b": [1, 2]}, {"a": 1.25, "b": [1, 3]}) == 1.0
    assert largest_difference({"a": 1}, {"b": 1}) is None
    lock = yaml.safe_load((tiny_pipeline["repo"] / "dvc.lock").read_text())
    (raw,) = lock["stages"]["download@image"]["outs"]
    assert dir_md5(tiny_pipeline["repo"] / raw["path"]) == raw["md5"]


def _lock(root: Path, stage: str, deps: list[str], outs: list[str]) -> None:
    entry = {
        "cmd": "true",
        "deps": [{"path": p, "md5": "0" * 32} for p in deps],
        "outs": [{"path": p, "md5": "0" * 32 + ".dir"} for p in outs],
    }
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {stage: entry}}))


@pytest.mark.parametrize("field", ["outs", "deps"])
@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlinked folder"])
def test_verify_refuses_a_lock_path_outside_the_workspace_before_touching_it(
    tmp_path: Path, field: str, where: str
) -> None:
    """An entry of dvc.lock naming a folder outside the workspace was rmtree'd (an output)
    or read (a dep) by verify; now refused in one line, the folder left alone."""
    root, victim = tmp_path / "repo", tmp_path / "victim"
    root.mkdir()
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    path = {"absolute": str(victim), "dotdot": "../victim", "symlinked folder": "link/keep.txt"}
    (root / "link").symlink_to(victim)
    given = {"deps": [], "outs": [], field: [path[where]]}
    _lock(root, "download@tabular", given["deps"], given["outs"])
    with pytest.raises(ReprolabError, match=r"is not a path inside the workspace"):
        verify(root, ["download@tabular"])
    with pytest.raises(SystemExit) as exited:
        main(["verify", "--root", str(root), "download@tabular"])
    assert str(exited.value).startswith("error: dvc.lock: download@tabular: ")
    assert "\n" not in str(exited.value)
    assert (victim / "keep.txt").read_text() == "keep"


def test_verify_reports_a_hand_edited_workspace_output_the_rerun_does_not_see(
    tmp_path: Path,
) -> None:
    """metrics/mlp/test.json edited by hand (`dvc status`: modified): the rerun writes the
    locked bytes, so comparing only the rerun said identical."""
    root, scratch = tmp_path / "repo", tmp_path / "scratch"
    for folder in (root, scratch):
        (folder / "metrics/mlp").mkdir(parents=True)
        (folder / "metrics/mlp/test.json").write_text('{"accuracy": 0.9}\n')
    locked = md5s(scratch, ["metrics/mlp/test.json"])["metrics/mlp/test.json"]
    out = {"path": "metrics/mlp/test.json", "md5": locked}
    assert _compare("evaluate@mlp", out, root, scratch).status == "identical"
    (root / "metrics/mlp/test.json").write_text('{"accuracy": 0.99}\n')
    edited = _compare("evaluate@mlp", out, root, scratch)
    assert edited.status == "differs"
    assert "the workspace's md5" in edited.detail and "dvc checkout" in edited.detail
    (root / "metrics/mlp/test.json").unlink()
    assert "missing from the workspace" in _compare("evaluate@mlp", out, root, scratch).detail


@pytest.fixture
def one_stage_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real git + DVC repo of one reproduced stage; dvc on the PATH of this process."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "in.txt").write_text("a\n")
    stage = {"cmd": "cp in.txt out.txt", "deps": ["in.txt"], "outs": ["out.txt"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"copy": stage}}))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro", "-q"]):
        run(cmd, root)
    monkeypatch.setenv("PATH", f"{BIN}:{os.environ['PATH']}")
    return root


def test_verify_reports_stages_gone_from_dvc_yaml_as_stale_and_verifies_the_rest(
    one_stage_repo: Path,
) -> None:
    """A model removed from params.yaml leaves its stages in dvc.lock: `dvc status` on them
    failed, and verify with them."""
    lock = yaml.safe_load((one_stage_repo / "dvc.lock").read_text())
    lock["stages"]["train@gone"] = lock["stages"]["copy"]
    (one_stage_repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    outcomes = {o.stage: o for o in verify(one_stage_repo)}
    assert outcomes["copy"].status == "identical"
    assert outcomes["train@gone"].status == "stale"
    assert "not in dvc.yaml any more" in outcomes["train@gone"].detail


def test_verify_during_another_dvc_process_is_one_line(one_stage_repo: Path) -> None:
    import zc.lockfile

    lock = zc.lockfile.LockFile(str(one_stage_repo / ".dvc/tmp/lock"))  # as `dvc repro` does
    try:
        with pytest.raises(ReprolabError, match="another DVC process holds") as err:
            verify(one_stage_repo)
    finally:
        lock.close()
    assert "\n" not in str(err.value)
