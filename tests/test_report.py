"""The report from hand-made metric files: ranked by validation (never test), byte-equal twice."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from reprolab.core.io import write_json, write_text
from reprolab.core.params import validate_params
from reprolab.report.render import write_report

TRIALS = "trial\tstate\tvalue\tlr\tweight_decay\tepochs\n" + "".join(
    f"{i}\t{s}\t{v}\t{lr}\t{wd}\t2\n"
    for i, (s, v, lr, wd) in enumerate(
        [
            ("COMPLETE", 0.5, 0.001, 1e-5),
            ("PRUNED", 0.9, 0.02, 1e-3),
            ("COMPLETE", 0.3, 0.005, 1e-4),
        ]
    )
)


# train.json's `train` block of every fake model (its parameter count aside).
TRAINED = {"best_epoch": 2, "kept_epoch": 2, "epochs_run": 3, "lr": 0.01, "weight_decay": 1e-4}


def _fake_regressor(name: str, val_rmsle: float) -> None:
    train = {
        "val": {"rmsle": val_rmsle, "rmse": 50.0, "r2": 0.4, "loss": val_rmsle},
        "train": TRAINED | {"n_parameters": 99},
    }
    write_json(f"metrics/{name}/train.json", train)
    write_json(f"metrics/{name}/test.json", train["val"] | {"n_test": 3})
    write_json(f"models/{name}/model.json", {"classes": [], "weights_md5": "y"})
    write_text(
        f"plots/curves/{name}.tsv",
        "epoch\ttrain_loss\tval_loss\tval_rmsle\n1\t1\t1\t1\n2\t0.5\t0.6\t0.6\n",
    )
    write_text(f"plots/trials/{name}.tsv", TRIALS)
    write_text(f"plots/predictions/{name}.csv", "actual,predicted\n10,12\n20,18\n30,33\n")
    # A ridge baseline that is better on validation than the network.
    ridge = {"val": {"rmsle": val_rmsle / 2, "loss": val_rmsle / 2, "rmse": 1.0, "r2": 0.9}}
    write_json("metrics/baselines/tabular/val.json", {"ridge": ridge | {"alpha": 10.0}})
    write_json(
        "metrics/baselines/tabular/test.json",
        {"ridge": {"rmsle": 0.3, "rmse": 40.0, "r2": 0.5, "loss": 0.3, "n_test": 3}},
    )


def _fake_outputs(val_acc: dict[str, float], test_acc: dict[str, float]) -> None:
    for model in val_acc:
        train = {
            "val": {"accuracy": val_acc[model], "loss": 0.3, "macro_f1": 0.9},
            "train": TRAINED | {"n_parameters": 1234},
        }
        test = {"accuracy": test_acc[model], "loss": 0.4, "macro_f1": 0.8}
        write_json(f"metrics/{model}/train.json", train)
        write_json(f"metrics/{model}/test.json", test)
        write_json(f"models/{model}/model.json", {"classes": ["a", "b"], "weights_md5": "x"})
        write_text(
            f"plots/curves/{model}.tsv",
            "epoch\ttrain_loss\tval_loss\tval_accuracy\n1\t1\t1\t0.5\n2\t0.5\t0.6\t0.7\n",
        )
        write_text(f"plots/trials/{model}.tsv", TRIALS)
        # The confusion matrix [[5, 1], [0, 4]], one row per test sample.
        rows = ["a,a"] * 5 + ["a,b"] + ["b,b"] * 4
        write_text(f"plots/confusion/{model}.csv", "actual,predicted\n" + "\n".join(rows) + "\n")


def test_report_ranks_by_validation_and_is_byte_deterministic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    params = validate_params(
        {
            "classifiers": {"mlp": {"arch": "mlp"}, "lenet": {"arch": "lenet"}},
            "regressors": {"tabular_mlp": {"arch": "tabular_mlp"}},
            "baselines": {"image": []},
        },
        options_of=[],
    )
    # lenet is better on validation, mlp on test: the ranking must follow validation.
    _fake_outputs({"mlp": 0.8, "lenet": 0.9}, {"mlp": 0.99, "lenet": 0.5})
    _fake_regressor("tabular_mlp", 0.5)
    boards = write_report(params)
    assert [[r["model"] for r in rows] for _, rows in boards] == [
        ["lenet", "mlp"],
        ["ridge", "tabular_mlp"],  # lower validation RMSLE first
    ]
    files = sorted(Path("reports").rglob("*.*"))
    first = {p: hashlib.md5(p.read_bytes()).hexdigest() for p in files}
    # 4 figures per classifier; the regressor has predictions instead of a confusion matrix.
    assert len([p for p in files if p.suffix == ".png"]) == 12
    assert Path("reports/figures/predictions-tabular_mlp.png").is_file()
    write_report(params)
    assert {p: hashlib.md5(p.read_bytes()).hexdigest() for p in files} == first
    page = Path("reports/index.html").read_text()
    assert "models:/digits-lenet@champion" in page and str(tmp_path) not in page
    # The champion of the regressors is the best network, never a baseline.
    assert "models:/diabetes-tabular_mlp@champion" in page
    assert json.dumps(str(tmp_path)) not in Path("reports/summary.md").read_text()


def test_a_model_no_better_than_a_constant_guess_is_flagged_and_never_champion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    params = validate_params(
        {
            "classifiers": {"mlp": {"arch": "mlp"}, "lenet": {"arch": "lenet"}},
            "baselines": {"image": []},
        },
        options_of=[],
    )
    # A diverged mlp at 0.10 (chance) and lenet at 0.5: the majority class alone scores 0.3.
    _fake_outputs({"mlp": 0.1, "lenet": 0.5}, {"mlp": 0.1, "lenet": 0.5})
    write_json("data/splits/image/meta.json", {"trivial_val": {"accuracy": 0.3}})
    boards = write_report(params)
    (_, rows), *_ = boards
    flags = {r["model"]: r["flag"] for r in rows}
    assert flags["lenet"] == ""
    assert flags["mlp"] == "no better than a constant guess (val 0.3000)"
    summary = Path("reports/summary.md").read_text()
    assert "mlp (WARNING: no better than a constant guess" in summary
    assert "models:/digits-lenet@champion" in summary
    # Both below the bar: no champion at all.
    write_json("data/splits/image/meta.json", {"trivial_val": {"accuracy": 0.6}})
    write_report(params)
    assert "@champion" not in Path("reports/summary.md").read_text()


def test_reprolab_champion_ranks_the_workspace_and_writes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`reprolab champion` ranks as the report does (lenet best by validation) and moves
    the alias in the store; it writes nothing DVC tracks. Here the store never registered
    lenet's weights, so it says so in one line instead."""
    import yaml

    from reprolab.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".dvc").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    raw = {"classifiers": {"mlp": {"arch": "mlp"}, "lenet": {"arch": "lenet"}}}
    Path("params.yaml").write_text(yaml.safe_dump(raw | {"baselines": {"image": []}}))
    _fake_outputs({"mlp": 0.8, "lenet": 0.9}, {"mlp": 0.99, "lenet": 0.5})
    before = sorted(p for p in tmp_path.rglob("*") if p.name != "mlflow.db")
    with pytest.raises(SystemExit, match="not on the best network of 1 group"):
        main(["champion"])
    out = capsys.readouterr().out
    assert "champion: classifiers on digits: best by validation: lenet" in out
    assert "champion: no registered MLflow version of lenet matches" in out
    assert "`dvc repro -f train@lenet`" in out
    assert not Path("reports").exists()
    assert sorted(p for p in tmp_path.rglob("*") if not p.name.startswith("mlflow")) == [
        p for p in before if not p.name.startswith("mlflow")
    ]


def test_context_puts_this_result_beside_heads_with_run_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reports/context.md (untracked): the commit, each network's headline metric beside
    HEAD's committed one, and a link to its MLflow run; a tracked report holds none of them."""
    from conftest import run

    from reprolab.report.context import committed_metrics, render_context

    monkeypatch.chdir(tmp_path)
    run(["git", "init", "-q"], tmp_path)
    write_json("reports/metrics.json", {"mlp": {"test_acc": 0.9}})
    run(["git", "add", "-A"], tmp_path)
    run(["git", "commit", "-qm", "result"], tmp_path)
    write_json("reports/metrics.json", {"mlp": {"test_acc": 0.95}})  # the workspace's
    assert committed_metrics() == {"mlp": {"test_acc": 0.9}}  # HEAD's, not the workspace's
    params = validate_params(
        {"classifiers": {"mlp": {"arch": "mlp"}, "lenet": {"arch": "lenet"}}}, options_of=[]
    )
    metrics = {"mlp": {"test_acc": 0.95}, "lenet": {"test_acc": 0.8}}
    runs = {"mlp": ("reprolab-digits", "1", "f" * 32), "lenet": None}
    page = render_context(params, metrics, committed_metrics(), "abc1234", runs)
    assert "Made at git commit `abc1234`" in page
    link = f"[reprolab-digits / ffffffff](http://127.0.0.1:5000/#/experiments/1/runs/{'f' * 32})"
    assert f"| mlp | test_acc | 0.95 | 0.9 | +0.05 | {link} |" in page
    assert "| lenet | test_acc | 0.8 | - | new | - |" in page
