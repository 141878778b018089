"""Bad params stop a stage before any work, naming the key and the value."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, clean_env, deep_merge

from reprolab import cli
from reprolab.core import stage
from reprolab.core.errors import ParamsError
from reprolab.core.params import load_params, validate_params
from reprolab.core.presets import apply_preset

DEFAULT = yaml.safe_load((REPO / "params.yaml").read_text())

BAD = {
    # case: (params override, the key named, the value named on that key's line)
    "unknown model arch": (
        {"classifiers": {"mlp": {"arch": "transformer"}}},
        "classifiers.mlp.arch",
        "transformer",
    ),
    "lr bounds reversed": ({"tune": {"lr": {"low": 0.1, "high": 0.001}}}, "tune.lr", "0.1"),
    # What `reprolab check` used to pass and a stage then crashed on (or ran wrongly with).
    "negative seed": ({"seed": -1}, "seed", "-1"),
    "seed over 32 bits": ({"seed": 2**40}, "seed", str(2**40)),
    "infinite lr bound": ({"tune": {"lr": {"high": float("inf")}}}, "tune.lr.high", "inf"),
    "storage not a URL": ({"tune": {"storage": "not-a-url"}}, "tune.storage", "not-a-url"),
    "a bool as a count": ({"tune": {"n_trials": True}}, "tune.n_trials", "True"),
    "SQLite folder missing": (
        {"tune": {"storage": "sqlite:////nonexistent/dir/x.db"}},
        "tune.storage",
        "/nonexistent/dir",
    ),
    "val fraction above 1": ({"split": {"val_fraction": 1.5}}, "split.val_fraction", "1.5"),
    "val fraction zero": ({"split": {"val_fraction": 0}}, "split.val_fraction", "0"),
    "no trials": ({"tune": {"n_trials": 0}}, "tune.n_trials", "0"),
    "zero budget override": (
        {"classifiers": {"mlp": {"budget": {"epochs": 0}}}},
        "classifiers.mlp.budget.epochs",
        "0",
    ),
    "conv arch on feature rows": (
        {"regressors": {"tabular_mlp": {"arch": "lenet"}}},
        "regressors.tabular_mlp.arch",
        "'lenet' takes image input",
    ),
    "unknown baseline": ({"baselines": {"tabular": ["lasso"]}}, "baselines.tabular.0", "lasso"),
    "unknown device": ({"device": "tpu"}, "device", "tpu"),
    "unknown dataset": ({"datasets": {"image": "imagenet"}}, "datasets.image", "imagenet"),
    "old single dataset key": ({"dataset": "mnist"}, "dataset", "unknown key (got 'mnist')"),
    "typo'd key": ({"tune": {"n_trial": 5}}, "tune.n_trial", "(got 5)"),
    "bad model option": (
        {"classifiers": {"mlp": {"options": {"dropout": 2.0}}}},
        "classifiers.mlp.options.dropout",
        "2.0",
    ),
    "unknown optimizer": (
        {"classifiers": {"lenet": {"optimizer": "adagrad"}}},
        "classifiers.lenet.optimizer",
        "adagrad",
    ),
    # The stage starts the launcher itself, without a shell: only torchrun's own flags.
    "a shell command as launcher": (
        {"train": {"launcher": "touch pwned; python"}},
        "train.launcher",
        "touch pwned; python",
    ),
    "a torchrun flag naming a path": (
        {"train": {"launcher": "torchrun --standalone --log_dir /tmp/x"}},
        "train.launcher",
        "--log_dir",
    ),
    "a stray word torchrun would run as its script": (
        {"train": {"launcher": "torchrun --standalone evil.py"}},
        "train.launcher",
        "evil.py",
    ),
    "a value torchrun refuses": (
        {"train": {"launcher": "torchrun --standalone --nproc_per_node 0"}},
        "train.launcher",
        "--nproc_per_node 0",
    ),
    "an unknown restore": ({"train": {"restore": "bestest"}}, "train.restore", "bestest"),
}


def model_of(key: str) -> str:
    return "tabular_mlp" if "tabular_mlp" in key else "mlp"


def names(message: str, key: str, value: str) -> bool:
    """A line of ``message`` is about ``key`` (``key: ...``) and shows ``value``."""
    line = rf"^(error: )?(params\.yaml: )?\s*{re.escape(key)}: .*{re.escape(value)}"
    return re.search(line, message, flags=re.M) is not None


def stage_error(
    script: str, arg: str, params: dict, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """What ``stages/<script> <arg>`` exits with on ``params``, run in this process: the
    script's own run_stage flags pick the models and dataset kinds validated, as in a real
    run; a body that would start work fails the test instead."""
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    real_run_stage = stage.run_stage

    def no_work(params, args) -> None:
        raise AssertionError(f"{script} {arg}: params passed validation")

    def validate_only(description, body, **flags) -> None:
        real_run_stage(description, no_work, **flags)

    monkeypatch.setattr(stage, "run_stage", validate_only)
    monkeypatch.setattr(sys, "argv", [script, arg])
    monkeypatch.chdir(folder)
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / "stages" / script), run_name="__main__")
    assert sorted(p.name for p in folder.iterdir()) == ["params.yaml"]  # nothing produced
    message = str(exit_.value.code)
    assert message.startswith("error: "), message  # a known error, not a crash
    return message


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_params_stop_a_stage_naming_key_and_value(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    override, key, value = BAD[case]
    message = stage_error(
        "tune.py", model_of(key), deep_merge(DEFAULT, override), tmp_path, monkeypatch
    )
    assert names(message, key, value), message


def test_a_stage_script_on_bad_params_exits_with_one_error_line(tmp_path: Path) -> None:
    """The real process: non-zero status, one `error:` line, no traceback, no output."""
    override, key, value = BAD["conv arch on feature rows"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(deep_merge(DEFAULT, override)))
    result = subprocess.run(
        [sys.executable, str(REPO / "stages" / "tune.py"), model_of(key)],
        cwd=tmp_path,
        env=clean_env(PYTHONPATH=str(REPO / "src")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and names(lines[0], key, value), result.stderr
    assert lines[0].startswith("error: ") and result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing produced


def test_one_bad_classifier_is_one_error(tmp_path: Path, monkeypatch) -> None:
    """Not also a false one about the generators' scorer, which is a valid classifier."""
    override, key, _ = BAD["unknown model arch"]
    message = stage_error("tune.py", "mlp", deep_merge(DEFAULT, override), tmp_path, monkeypatch)
    assert message.count("\n") == 0 and "scorer" not in message, message  # one line
    assert message.startswith("error: params.yaml: classifiers.mlp.arch: "), message


def test_a_model_missing_from_params_is_named(tmp_path: Path, monkeypatch) -> None:
    message = stage_error("train.py", "vgg", DEFAULT, tmp_path, monkeypatch)
    assert "vgg: no such model" in message, message
    assert re.search(r"have: .*\bmlp\b", message), message  # and the models it has


def test_the_shipped_params_are_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert set(params.classifiers) >= {"mlp", "lenet", "cnn", "alexnet", "resnet18"}
    assert set(params.regressors) >= {"tabular_mlp"}
    assert params.tune_for("resnet18").n_trials < params.tune.n_trials  # budget override


def test_split_fractions_must_leave_a_train_split() -> None:
    with pytest.raises(ParamsError, match="split: val_fraction \\+ test_fraction"):
        validate_params(deep_merge(DEFAULT, {"split": {"val_fraction": 0.5, "test_fraction": 0.5}}))


def test_missing_params_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_all_arch_options_are_checked_by_default() -> None:
    bad = deep_merge(DEFAULT, {"classifiers": {"cnn": {"options": {"width": 0}}}})
    validate_params(bad, options_of=["mlp"])  # a stage of another model is not stopped
    with pytest.raises(ParamsError, match="classifiers.cnn.options.width"):
        validate_params(bad)


def test_reprolab_check_validates_every_model(tmp_path: Path, capsys) -> None:
    bad = deep_merge(DEFAULT, {"classifiers": {"cnn": {"options": {"width": 0}}}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["check", "--params", str(tmp_path / "params.yaml")])
    message = str(exit_.value.code)
    assert message.startswith("error: ") and "classifiers.cnn.options.width" in message, message
    cli.main(["check", "--params", str(REPO / "params.yaml")])
    out = capsys.readouterr().out
    assert "params.yaml: valid; classifiers on " in out and "regressors on " in out, out


def test_a_model_name_is_unique_across_groups() -> None:
    twice = deep_merge(DEFAULT, {"regressors": {"mlp": {"arch": "tabular_mlp"}}})
    with pytest.raises(ParamsError, match="'mlp' is in both classifiers and regressors"):
        validate_params(twice, options_of=[])


def test_a_dataset_of_the_wrong_kind_stops_its_data_stage(tmp_path: Path, monkeypatch) -> None:
    bad = deep_merge(DEFAULT, {"datasets": {"tabular": "mnist"}})
    message = stage_error("download.py", "tabular", bad, tmp_path, monkeypatch)
    assert "datasets.tabular: 'mnist' is a(n) image dataset" in message, message
    assert "diabetes" in message  # names the datasets of that kind
    validate_params(bad, kinds_of=["image"])  # the image stages are not stopped
    with pytest.raises(ParamsError, match="datasets.tabular: 'mnist'"):
        validate_params(bad)  # reprolab check: every kind


def test_an_sqlite_storage_in_a_missing_folder_creates_nothing(tmp_path: Path) -> None:
    bad = deep_merge(DEFAULT, {"tune": {"storage": f"sqlite:///{tmp_path}/no/such/x.db"}})
    with pytest.raises(ParamsError, match="does not exist"):
        validate_params(bad, options_of=[])
    assert not (tmp_path / "no").exists()


def test_a_key_given_twice_is_refused_as_dvc_refuses_it(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\nseed: 2\nclassifiers: {mlp: {arch: mlp}}\n")
    with pytest.raises(ParamsError, match="key 'seed' appears twice in one mapping .line 2."):
        load_params(path, options_of=[])


def _alias_bomb(levels: int) -> str:
    """A YAML alias bomb under an unknown key: ``levels`` anchors of 9 aliases of the one
    before (9**levels leaves; 8 levels took 13 s and 1 GB to refuse with a 351 MB line)."""
    lines = ["seed: 0", 'z: &a0 ["lol"]']
    lines += [f"z{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [8, 30])
def test_a_yaml_alias_bomb_is_refused_at_once_in_one_short_line(
    tmp_path: Path, levels: int
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(_alias_bomb(levels))
    with pytest.raises(ParamsError) as err:
        load_params(path, options_of=[])
    message = str(err.value)
    assert "aliases (*name) expand it past" in message and len(message) < 300, message[:500]
    path.write_text("a: &x [1, *x]\n")  # an alias of the list it is in
    with pytest.raises(ParamsError, match="contains itself"):
        load_params(path, options_of=[])
    path.write_text(_alias_bomb(levels))  # `reprolab preset` reads it with ruamel first
    with pytest.raises(ParamsError, match="aliases"):
        apply_preset("digits", path, REPO / "presets")


def test_a_huge_params_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    with path.open("w") as out:  # 2.5M unknown keys: 150 s, 3.8 GB and a 54 MB error
        out.writelines(f"unknown_key_{i}: {i}\n" for i in range(2_500_000))
    with pytest.raises(ParamsError, match=r"bytes; a params file is at most \d+") as err:
        load_params(path, options_of=[])
    assert len(str(err.value)) < 200


def test_error_messages_cut_every_echoed_value_and_count_the_rest() -> None:
    huge = "x" * 100_000
    many = deep_merge(DEFAULT, {f"unknown_{i}": huge for i in range(500)})
    with pytest.raises(ParamsError) as err:
        validate_params(many, options_of=[])
    lines = str(err.value).splitlines()
    assert len(lines) < 30 and max(len(line) for line in lines) < 150, lines[:3]
    assert lines[-1] == "  ... and 480 more"
    assert "unknown_0: unknown key (got 'xxxx" in lines[1]
    options = deep_merge(DEFAULT, {"classifiers": {"mlp": {"options": {"dropout": huge}}}})
    with pytest.raises(ParamsError) as err:
        validate_params(options, options_of=["mlp"])
    assert len(str(err.value)) < 300, str(err.value)[:300]
    with pytest.raises(ParamsError) as err:
        validate_params(deep_merge(DEFAULT, {"datasets": {"image": huge}}), options_of=[])
    assert len(str(err.value)) < 300, str(err.value)[:300]


@pytest.mark.parametrize("length", [300, 230])
def test_a_model_key_too_long_for_the_file_system_is_refused_by_check(length: int) -> None:
    """A 300-character key passed `reprolab check`; `dvc repro` then failed with "File name
    too long; free space or fix the permissions". 230 fits a name but not its temp files."""
    key = "m" * length
    bad = deep_merge(DEFAULT, {"classifiers": {key: {"arch": "mlp"}}})
    with pytest.raises(ParamsError, match=rf"model name of {length} characters is too long") as e:
        validate_params(bad, options_of=[])
    assert len(str(e.value)) < 400, str(e.value)
    fits = deep_merge(DEFAULT, {"classifiers": {"m" * 150: {"arch": "mlp"}}})
    validate_params(fits, options_of=[])


def test_a_name_too_long_for_the_file_system_is_not_advised_as_free_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(DEFAULT))
    monkeypatch.setattr(sys, "argv", ["train.py"])

    def body(params, args) -> None:
        raise OSError(errno.ENAMETOOLONG, "File name too long", "plots/curves/" + "m" * 300)

    with pytest.raises(SystemExit) as exited:
        stage.run_stage("a stage", body)
    message = str(exited.value)
    assert "free space" not in message and "shorten" in message, message
    assert message.startswith("error: plots/curves/mmm") and len(message) < 250, message


@pytest.mark.parametrize(
    ("datasets", "given", "expected"),
    [
        ({"tabular": "csv"}, {}, "csv.path is not set (datasets.tabular is csv)"),
        ({"tabular": "csv"}, {"csv": {"path": "data/own/tabular/t.csv"}}, "csv.target is not"),
        ({"image": "imagefolder"}, {}, "imagefolder.path is not set (datasets.image is image"),
    ],
)
def test_a_users_own_dataset_without_its_place_is_a_params_error(
    datasets: dict, given: dict, expected: str
) -> None:
    """Found when params are loaded (every stage, `reprolab check`), not in a download."""
    params = {"classifiers": {"mlp": {"arch": "mlp"}}, "datasets": datasets, **given}
    with pytest.raises(ParamsError, match=re.escape(expected)):
        validate_params(params)
    validate_params(  # named: valid (whether the file is there is the download's to say)
        deep_merge(params, {"csv": {"path": "t.csv", "target": "y"}, "imagefolder": {"path": "f"}})
    )
