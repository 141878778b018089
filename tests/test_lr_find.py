"""The learning-rate range test through the `reprolab lr-find` command, on real digits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO

from reprolab import cli


def test_lr_find_writes_curve_plot_and_a_usable_range(digits_split: Path, capsys) -> None:
    cli.main(["lr-find", "mlp", "--steps", "80", "--end-lr", "10"])
    out = digits_split / "reports" / "lr_find"
    suggestion = json.loads((out / "mlp.json").read_text())
    assert 1e-6 <= suggestion["low"] < suggestion["high"] <= 10
    assert suggestion["low"] == pytest.approx(suggestion["steepest"] / 10)
    rows = (out / "mlp.tsv").read_text().splitlines()
    assert rows[0] == "lr\tloss" and 10 < len(rows) <= 81
    losses = [float(r.split("\t")[1]) for r in rows[1:]]
    assert min(losses) < losses[0] * 0.75, "the loss must fall somewhere in the range"
    assert (out / "mlp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "dvc exp run -S tune.lr.low=" in capsys.readouterr().out


def test_lr_find_before_split_says_what_to_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    with pytest.raises(SystemExit, match="meta.json"):
        cli.main(["lr-find", "mlp"])


@pytest.mark.parametrize("out", ["params.yaml", "params.yaml/lr"])
def test_lr_find_refuses_an_out_file_before_the_range_test(
    digits_split: Path, monkeypatch, out: str
) -> None:
    """--out params.yaml was a FileExistsError traceback after the whole range test (62 s)."""
    from reprolab.learn import lr_find

    def never(*args, **kwargs):
        raise AssertionError("the range test ran")

    monkeypatch.setattr(lr_find, "lr_range_test", never)
    with pytest.raises(SystemExit) as exited:
        cli.main(["lr-find", "mlp", "--out", out])
    assert str(exited.value) == (
        f"error: lr-find: --out {out}: params.yaml is a file, not a folder; give a folder "
        "(default reports/lr_find)"
    )
