"""The `reprolab` command itself: --version, the help of every subcommand, and the progress
bars, drawn on a terminal (a real pseudo-terminal) and never into a pipe."""

from __future__ import annotations

import argparse
import inspect
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from conftest import REPO, clean_env, run, run_in_terminal

from reprolab import cli

# A tqdm bar as it draws itself: "epochs:  33%|███▎      | 1/3 [00:00<00:00, ...]".
BAR = re.compile(rb"\d+%\|.*\| *\d+/\d+ \[")
# The epoch bar of a tiny real training, through the same API as tests/test_engine.py.
TINY_FIT = """
import torch
from reprolab.core.schema import ModelSpec, TrainParams
from reprolab.learn.engine import fit, make_optimizer
from reprolab.learn.tensors import TensorData
from reprolab.models._base import ModelSpec as ArchSpec
from reprolab.models._base import build_model

g = torch.Generator().manual_seed(0)
def blobs(n):
    y = torch.randint(0, 3, (n,), generator=g)
    return TensorData(x=torch.randn(n, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1), y=y)

torch.manual_seed(0)
model = build_model(ArchSpec("mlp", {"hidden": [16]}, (1, 8, 8), 3, [0.0], [1.0]))
opt = make_optimizer(model, ModelSpec(arch="mlp"), lr=0.01, weight_decay=0.0)
params = TrainParams(max_epochs=3, patience=3)
result = fit(model, blobs(64), blobs(32), optimizer=opt, train_params=params, epochs=3,
             batch_size=16, seed=0)
print(f"trained {len(result.history)} epochs")
"""


def child_env() -> dict[str, str]:
    """The checkout's own code, and no TQDM_* settings (tqdm reads TQDM_DISABLE and co.)."""
    env = {k: v for k, v in clean_env().items() if not k.startswith("TQDM_")}
    return {**env, "PYTHONPATH": str(REPO / "src")}


def run_in_pipes(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``cmd`` with stdout and stderr pipes, as CI or `... 2>&1 | tee log` does."""
    return subprocess.run(
        cmd, cwd=cwd, env=child_env(), capture_output=True, stdin=subprocess.DEVNULL, timeout=60
    )


def test_version_prints_the_package_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"reprolab {cli.package_version()}\n"


def test_version_without_package_metadata_reads_pyproject(monkeypatch) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert cli.package_version() == pyproject["project"]["version"]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.ArgumentParser]]:
    """name -> (its line in `reprolab --help`, its own parser)."""
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    lines = {choice.dest: choice.help for choice in action._choices_actions}
    return {name: (lines.get(name) or "", sub) for name, sub in action.choices.items()}


def help_text(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # wrapping aside


def test_every_subcommand_has_a_line_a_description_and_shows_defaults(capsys) -> None:
    commands = subcommands(cli.build_parser())
    assert {"check", "lr-find", "preset", "tune-worker", "predict", "verify"} <= set(commands)
    top = help_text(["--help"], capsys)
    texts = [top]
    for name, (line, sub) in commands.items():
        assert line and "\n" not in line and len(line) <= 90, f"{name}: {line!r}"
        assert line in top, f"{name}'s line is not in `reprolab --help`"
        own = help_text([name, "--help"], capsys)
        description = " ".join(inspect.cleandoc(sub.description or "").split())
        assert description.startswith(line), f"{name} --help has no description"
        assert description in own
        for action in sub._actions:
            if not action.option_strings or action.required:
                continue
            if action.default not in (None, argparse.SUPPRESS):
                assert f"(default: {action.default})" in own, f"{name} {action.dest}"
        texts.append(own)
    # params.yaml has no `models:` key (the groups are classifiers/regressors/generators);
    # an MLflow URI (models:/name@alias) is no such key.
    wrong = [t for t in texts if re.search(r"(?<![\w/])models:(?!/)", t)]
    assert not wrong, wrong


def test_lr_find_default_out_is_ignored_by_git_and_dvc() -> None:
    out = cli.build_parser().parse_args(["lr-find", "mlp"]).out
    probe = f"{out}/mlp.png"
    run(["git", "check-ignore", "-q", probe], REPO)
    run(["dvc", "check-ignore", "-q", probe], REPO)


def test_check_gives_the_artifacts_lines_a_new_model_needs(tmp_path: Path) -> None:
    """A model added to params.yaml only: `reprolab check` passes and prints the dvc.yaml
    `artifacts:` lines it lacks; pasted in, DVC reads them as tests/test_dag.py wants."""
    import yaml
    from dvc.repo import Repo

    for rel in ("dvc.yaml", "params.yaml", ".dvc/config"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((REPO / rel).read_text())
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["regressors"]["wide_mlp"] = params["regressors"]["tabular_mlp"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    check = [sys.executable, "-m", "reprolab.cli", "check"]
    told = run_in_pipes(check, tmp_path)
    assert told.returncode == 0, told.stderr
    said = told.stderr.decode()
    assert said.startswith("warning: dvc.yaml: wide_mlp has no entry under `artifacts:`")
    lines = said.split("add:\n", 1)[1]
    assert lines.startswith("  wide-mlp: {path: models/wide_mlp/model.pt, type: model")
    with open(tmp_path / "dvc.yaml", "a") as dvc_yaml:  # artifacts: is its last section
        dvc_yaml.write(lines)
    assert run_in_pipes(check, tmp_path).stderr == b""
    with Repo(str(tmp_path), config={"core": {"no_scm": True}}) as repo:
        artifact = repo.artifacts.read()["dvc.yaml"]["wide-mlp"]
    assert artifact.path == "models/wide_mlp/model.pt" and artifact.type == "model"
    assert artifact.labels == ["regressor", "diabetes"]
    assert artifact.meta == {"mlflow_model": "diabetes-wide_mlp"}


def test_epoch_bar_is_drawn_on_a_terminal() -> None:
    code, shown = run_in_terminal([sys.executable, "-c", TINY_FIT], REPO, env=child_env())
    assert code == 0, shown[-2000:]
    assert b"trained 3 epochs" in shown
    assert re.search(rb"epochs: +" + BAR.pattern, shown), shown[-2000:]
    assert b"epochs: epoch 1/3" not in shown  # the lines are for pipes, where no bar is


def test_epoch_bar_stays_out_of_pipes() -> None:
    result = run_in_pipes([sys.executable, "-c", TINY_FIT], REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == b"trained 3 epochs"
    assert not BAR.search(result.stdout + result.stderr), result.stderr[-2000:]
    # Instead of a bar, short lines (learn.loop.EpochLines): the first epoch's, a closing one.
    lines = result.stderr.decode().splitlines()
    assert lines[0].startswith("epochs: epoch 1/3 val_loss "), lines
    assert lines[-1].startswith("epochs: 3 epochs, best "), lines


def test_lr_find_draws_its_bar_on_a_terminal(digits_split: Path) -> None:
    """The real command in a new process: its numerics mode is set before torch loads, and
    the range test's steps show as a bar."""
    cmd = [sys.executable, "-m", "reprolab.cli", "lr-find", "mlp", "--steps", "8"]
    code, shown = run_in_terminal(cmd, digits_split, env=child_env())
    assert code == 0, shown[-2000:]
    assert re.search(rb"lr-find: +" + BAR.pattern, shown), shown[-2000:]
    assert b"bound the search: dvc exp run -S tune.lr.low=" in shown
    assert (digits_split / "reports" / "lr_find" / "mlp.json").is_file()


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["nosuch"], "nosuch"),
        (["dcgan"], "dcgan"),
        (["mlp", "--steps", "2"], "got 2"),
        (["mlp", "--start-lr", "1", "--end-lr", "0.1"], "got 1.0 and 0.1"),
    ],
)
def test_lr_find_bad_input_is_one_line_naming_it(digits_split: Path, argv, named) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["lr-find", *argv])
    message = str(exit_.value.code)
    assert message.startswith("error: ") and "\n" not in message and named in message
