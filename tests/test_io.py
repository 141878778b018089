"""Atomic writes: permissions follow the umask, tables quote what needs quoting."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from reprolab.core.io import atomic_dir, write_json, write_tsv


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_outputs_respect_the_umask(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
        with atomic_dir(tmp_path / "figures") as folder:
            write_json(folder / "x.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "figures").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "figures" / "x.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_class_name_with_the_separator_is_quoted(tmp_path: Path) -> None:
    rows = [{"actual": "cat,dog", "predicted": 'say "hi"'}, {"actual": "b", "predicted": "b"}]
    write_tsv(tmp_path / "c.csv", rows, sep=",")
    with open(tmp_path / "c.csv", newline="") as f:
        assert list(csv.DictReader(f)) == rows
    write_tsv(tmp_path / "t.tsv", [{"x": 0.5, "y": 1}])
    assert (tmp_path / "t.tsv").read_text() == "x\ty\n0.5\t1\n"
