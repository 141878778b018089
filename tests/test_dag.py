"""The DAG as DVC resolves it: only the evaluate stages may read a test split."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest
from conftest import REPO

from reprolab.core.paths import STAGE_SUFFIX as SUFFIX  # tune@mlp, tune_regressor@tabular_mlp

TEST_SPLITS = [PurePosixPath(f"data/splits/{kind}/test.npz") for kind in ("image", "tabular")]


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list[str]]]:
    import shutil

    from dvc.repo import Repo

    # Resolved on a copy of the DAG's files: DVC writes its state (.dvc/tmp) where it opens a
    # repo, and a test leaves the checkout as it found it.
    folder = tmp_path_factory.mktemp("dag")
    for rel in ("dvc.yaml", "params.yaml", ".dvc/config"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, folder / rel)
    with Repo(str(folder), config={"core": {"no_scm": True}}) as repo:
        return {
            s.name: {
                "deps": [PurePosixPath(d.def_path).as_posix() for d in s.deps],
                "params": [k for p in s.params for k in p.params],
                "transient": [o.def_path for o in s.outs if not o.persist],
                "cached": [o.def_path for o in s.outs if o.use_cache],
            }
            for s in repo.index.stages
        }


def test_every_code_dep_exists(stages: dict) -> None:
    """A stage's code deps are files of this checkout (a moved module is renamed in dvc.yaml
    too, or `dvc repro` stops at that stage)."""
    missing = {
        dep
        for s in stages.values()
        for dep in s["deps"]
        if dep.startswith(("src/", "stages/")) and not (REPO / dep).exists()
    }
    assert not missing, f"dvc.yaml lists files that do not exist: {sorted(missing)}"


def reads_test_split(dep: str) -> bool:
    path = PurePosixPath(dep)
    # The file itself, or any folder that contains it (data/, data/splits/...).
    return any(path == split or path in split.parents for split in TEST_SPLITS)


def test_only_evaluate_stages_read_the_test_split(stages: dict) -> None:
    readers = {name for name, s in stages.items() if any(map(reads_test_split, s["deps"]))}
    evaluates = {name for name in stages if name.startswith("evaluate")}
    assert {n.split("@")[0] for n in evaluates} == {
        "evaluate",
        "evaluate_regressor",
        "evaluate_generator",
        "evaluate_baselines",
    }
    assert readers == evaluates, f"test split read by {sorted(readers - evaluates)}"


def _groups() -> dict[str, dict]:
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    return {group: params[group] for group in SUFFIX}


def test_every_model_has_tune_train_evaluate(stages: dict) -> None:
    for group, models in _groups().items():
        assert models, f"the default params.yaml has no {group}"
        for model in models:
            for stage in ("tune", "train", "evaluate"):
                name = f"{stage}{SUFFIX[group]}@{model}"
                assert name in stages
                assert f"{group}.{model}" in stages[name]["params"] or stage == "evaluate"


def test_model_stages_depend_on_their_own_architecture_file_only(stages: dict) -> None:
    for group, models in _groups().items():
        for model, spec in models.items():
            arch_files = {
                d
                for d in stages[f"train{SUFFIX[group]}@{model}"]["deps"]
                if d.startswith("src/reprolab/models/")
            }
            expected = {"src/reprolab/models/_base.py", f"src/reprolab/models/{spec['arch']}.py"}
            if group == "generators":  # and its scorer's, to load the trained classifier
                expected.add(f"src/reprolab/models/{spec['scorer']['arch']}.py")
            assert arch_files == expected


def test_generator_stages_depend_on_their_scorers_model(stages: dict) -> None:
    """A retrained scorer is another feature space: the generator's stages rerun."""
    for model, spec in _groups()["generators"].items():
        scorer = spec["scorer"]["model"]
        for stage in ("tune", "train", "evaluate"):
            deps = set(stages[f"{stage}_generator@{model}"]["deps"])
            assert {f"models/{scorer}/model.pt", f"models/{scorer}/model.json"} <= deps


def test_a_stage_touches_one_kind_of_data_only(stages: dict) -> None:
    """So switching datasets.image never reruns a tabular stage, and the other way round."""
    for name, s in stages.items():
        if name == "report":
            continue
        kinds = {
            kind
            for kind in ("image", "tabular")
            if f"datasets.{kind}" in s["params"]
            or any(d.startswith(f"data/splits/{kind}/") for d in s["deps"])
        }
        assert len(kinds) <= 1, f"{name} depends on {sorted(kinds)} data"


def test_every_model_is_a_dvc_artifact_named_for_its_mlflow_model(tmp_path) -> None:
    """dvc.yaml's `artifacts:` (DVC's model registry) lists exactly the models of params.yaml,
    each pointing at its model.pt and naming its MLflow registered model."""
    import shutil

    import yaml
    from dvc.repo import Repo

    from reprolab.tracking.models import registered_name

    for rel in ("dvc.yaml", "params.yaml", ".dvc/config"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, tmp_path / rel)
    with Repo(str(tmp_path), config={"core": {"no_scm": True}}) as repo:
        artifacts = repo.artifacts.read()["dvc.yaml"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    kinds = {"classifiers": "image", "regressors": "tabular", "generators": "image"}
    expected = {
        name: (group, registered_name(params["datasets"][kind], name))
        for group, kind in kinds.items()
        for name in params[group]
    }
    by_path = {a.path: a for a in artifacts.values()}
    assert set(by_path) == {f"models/{name}/model.pt" for name in expected}, (
        "dvc.yaml's artifacts: differ from params.yaml's models; `reprolab check` prints the "
        "lines a new model needs"
    )
    for name, (group, mlflow_name) in expected.items():
        artifact = by_path[f"models/{name}/model.pt"]
        assert artifact.type == "model" and artifact.desc
        assert artifact.meta == {"mlflow_model": mlflow_name}
        assert artifact.labels == [group.removesuffix("s"), mlflow_name.split("-")[0]]


def test_tune_stages_declare_what_the_study_identity_holds(stages: dict) -> None:
    """A tune stage reruns exactly when its study's identity changes: the `train.*` keys its
    task's trials read, `numerics` and `requirements.lock` (the packages) are declared."""
    from reprolab.core.schema import GROUPS
    from reprolab.learn.tasks import get_task

    for group, models in _groups().items():
        task = get_task(GROUPS[group][1])
        for model in models:
            s = stages[f"tune{SUFFIX[group]}@{model}"]
            declared = {k.removeprefix("train.") for k in s["params"] if k.startswith("train.")}
            assert declared == set(task.trial_train_keys), model
            assert {"numerics", "threads", "seed", "tune"} <= set(s["params"])
            assert "requirements.lock" in s["deps"]


def test_no_output_is_deleted_before_its_stage_runs(stages: dict) -> None:
    """Every output is `persist`: DVC never deletes it first, so a stage that fails (a bad
    params value, a store fault) leaves the last result whole; stages replace their outputs
    atomically instead."""
    transient = {name: s["transient"] for name, s in stages.items() if s["transient"]}
    assert not transient, transient


def test_every_stage_has_an_output_a_fresh_clone_lacks(stages: dict) -> None:
    """A fresh clone has git's files, not DVC's cache: a stage whose outputs were all in git
    would be skipped there, leaving the MLflow and Optuna stores without its runs, trials and
    test metrics. Each stage keeps one output in DVC's cache, so the first `dvc repro` of a
    clone recomputes every stage (and matches dvc.lock bit for bit)."""
    assert {name for name, s in stages.items() if not s["cached"]} == set()
