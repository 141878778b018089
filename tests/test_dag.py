"""The DAG as DVC resolves it: only evaluate@* may read the test split."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest
from conftest import REPO

TEST_SPLIT = PurePosixPath("data/splits/test.npz")


@pytest.fixture(scope="module")
def stages() -> dict[str, dict[str, list[str]]]:
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return {
            s.name: {
                "deps": [PurePosixPath(d.def_path).as_posix() for d in s.deps],
                "params": [k for p in s.params for k in p.params],
            }
            for s in repo.index.stages
        }


def reads_test_split(dep: str) -> bool:
    path = PurePosixPath(dep)
    # The file itself, or any folder that contains it (data/, data/splits/).
    return path == TEST_SPLIT or path in TEST_SPLIT.parents


def test_only_evaluate_stages_read_the_test_split(stages: dict) -> None:
    readers = {name for name, s in stages.items() if any(map(reads_test_split, s["deps"]))}
    evaluates = {name for name in stages if name.startswith("evaluate@")}
    assert evaluates, "no evaluate stage in dvc.yaml"
    assert readers == evaluates, f"test split read by {sorted(readers - evaluates)}"


def test_every_model_has_tune_train_evaluate(stages: dict) -> None:
    import yaml

    models = yaml.safe_load((REPO / "params.yaml").read_text())["models"]
    for model in models:
        for stage in ("tune", "train", "evaluate"):
            assert f"{stage}@{model}" in stages
            assert f"models.{model}" in stages[f"{stage}@{model}"]["params"] or stage == "evaluate"


def test_model_stages_depend_on_their_own_architecture_file_only(stages: dict) -> None:
    import yaml

    models = yaml.safe_load((REPO / "params.yaml").read_text())["models"]
    for model, spec in models.items():
        arch_files = {
            d for d in stages[f"train@{model}"]["deps"] if d.startswith("src/reprolab/models/")
        }
        assert arch_files == {
            "src/reprolab/models/_base.py",
            f"src/reprolab/models/{spec['arch']}.py",
        }
