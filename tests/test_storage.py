"""Split files read and written without loading them whole (core/npz.py): the same bytes
as np.savez, the same rows as np.load, the same trained weights as the in-memory path."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reprolab.core import npz
from reprolab.core.errors import DataError
from reprolab.core.npz import NpzWriter, open_npz
from reprolab.core.schema import ModelSpec, TrainParams
from reprolab.data.split import write_split_file
from reprolab.learn.engine import fit, make_optimizer, predict
from reprolab.learn.tensors import DiskRows, load_split, subsample
from reprolab.models._base import ModelSpec as ArchSpec
from reprolab.models._base import build_model


def image_split(path: Path, n: int = 120, size: int = 8, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    y = rng.integers(0, 3, n).astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y)
    return x, y


def test_a_member_reads_the_rows_np_load_gives(tmp_path: Path) -> None:
    x, y = image_split(tmp_path / "s.npz")
    members = open_npz(tmp_path / "s.npz")
    assert np.array_equal(members["x"].load(), x) and np.array_equal(members["y"].load(), y)
    index = np.array([5, 3, 4, 119, 0, 4, 60])  # unordered, a repeat, the edges
    assert np.array_equal(members["x"].take(index), x[index])
    assert np.array_equal(members["x"][index], x[index])  # as the baselines pick train rows
    assert np.array_equal(members["x"][10:20], x[10:20])
    assert np.array_equal(members["x"].rows(7, 50), x[7:50])
    assert np.array_equal(np.concatenate(list(members["x"].chunks())), x)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_the_streamed_writer_writes_np_savez_bytes(tmp_path: Path, chunk: int) -> None:
    rng = np.random.default_rng(1)
    for x in (rng.integers(0, 256, (50, 3, 4, 4), dtype=np.uint8), np.zeros((0, 5), np.float32)):
        y = np.arange(len(x), dtype=np.int64)
        expected = io.BytesIO()
        np.savez(expected, x=x, y=y)
        got = io.BytesIO()
        with NpzWriter(got) as npz:
            with npz.member("x", x.shape, x.dtype) as write:
                for start in range(0, len(x), chunk):
                    write(x[start : start + chunk])
            npz.array("y", y)
        assert got.getvalue() == expected.getvalue()


def test_a_split_written_in_chunks_is_np_savez_of_its_rows(tmp_path: Path, monkeypatch) -> None:
    x, y = image_split(tmp_path / "all.npz", n=90)
    rows = np.sort(np.random.default_rng(2).choice(90, 40, replace=False))
    monkeypatch.setattr(npz, "CHUNK_BYTES", 3 * x[0].nbytes)  # chunks of 3 rows

    class OnDemand:  # rows produced only when asked for, as imagefolder's ImageRows
        shape, dtype = x.shape, x.dtype

        def __len__(self) -> int:
            return len(x)

        def __getitem__(self, index):
            assert len(index) <= 3
            return x[index]

    write_split_file(tmp_path / "chunked.npz", OnDemand(), y, rows)
    np.savez(tmp_path / "whole.npz", x=x[rows], y=y[rows])
    assert (tmp_path / "chunked.npz").read_bytes() == (tmp_path / "whole.npz").read_bytes()


def tiny_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    spec = ArchSpec("cnn", {"width": 4}, (3, 8, 8), 3, [127.0] * 3, [70.0] * 3)
    return build_model(spec)


def test_training_on_a_split_left_on_disk_is_bit_identical(tmp_path: Path, monkeypatch) -> None:
    x, _ = image_split(tmp_path / "image" / "train.npz", n=150)
    image_split(tmp_path / "image" / "val.npz", n=40, seed=1)
    results = []
    for budget in ("256", "0"):  # the split in memory, then left on disk
        monkeypatch.setenv(npz.MEMORY_ENV, budget)
        train, val = (
            load_split(tmp_path / "image" / f"{s}.npz", torch.device("cpu"))
            for s in ("train", "val")
        )
        assert isinstance(train.x, DiskRows) == (budget == "0")
        assert float(train.x.max()) == x.max() and torch.equal(train.x[:4], torch.from_numpy(x[:4]))
        assert torch.equal(torch.cat(list(train.x.split(7))), torch.from_numpy(x))  # FID scorer
        part = subsample(train, 50, seed=3, stratify=True)
        model = tiny_cnn()
        opt = make_optimizer(model, ModelSpec(arch="cnn"), lr=0.01, weight_decay=0.0)
        params = TrainParams(max_epochs=2, patience=5)
        fit(model, part, val, optimizer=opt, train_params=params, epochs=2, batch_size=16, seed=0)
        results.append(
            (model.state_dict(), predict(model, val, batch_size=7), part.batch(torch.arange(50)))
        )
    (memory_state, memory_out, memory_rows), (disk_state, disk_out, disk_rows) = results
    assert all(torch.equal(memory_state[k], disk_state[k]) for k in memory_state)
    assert torch.equal(memory_out, disk_out)
    assert all(torch.equal(a, b) for a, b in zip(memory_rows, disk_rows, strict=True))


def test_imagefolder_decodes_in_chunks_what_it_decoded_whole(tmp_path: Path, monkeypatch) -> None:
    from reprolab.data.sources import imagefolder

    rng = np.random.default_rng(0)
    files = []
    for i in range(11):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (13, 9, 3), dtype=np.uint8)).save(files[-1])
    whole = np.stack(  # the former decode: every image at once, then NCHW
        [np.asarray(Image.open(f).convert("RGB").resize((6, 6), Image.BILINEAR)) for f in files]
    ).transpose(0, 3, 1, 2)
    rows = imagefolder.ImageRows([str(f) for f in files], 6)
    assert rows.shape == whole.shape and np.array_equal(rows[np.arange(11)], whole)
    monkeypatch.setattr(npz, "CHUNK_BYTES", 4 * whole[0].nbytes)
    picked = np.array([0, 2, 3, 5, 6, 7, 10])
    labels = np.arange(11, dtype=np.int64)
    write_split_file(tmp_path / "chunked.npz", rows, labels, picked)
    np.savez(tmp_path / "whole.npz", x=np.ascontiguousarray(whole)[picked], y=labels[picked])
    assert (tmp_path / "chunked.npz").read_bytes() == (tmp_path / "whole.npz").read_bytes()


@pytest.mark.parametrize("budget", ["256", "0"])
@pytest.mark.parametrize("damage", ["flipped byte", "cut in the data", "compressed"])
def test_a_damaged_split_file_is_one_line_either_way(
    tmp_path: Path, monkeypatch, budget: str, damage: str
) -> None:
    path = tmp_path / "image" / "train.npz"
    x, y = image_split(path)
    data = bytearray(path.read_bytes())
    if damage == "flipped byte":
        if budget == "0":
            pytest.skip("rows read a batch at a time are not CRC-checked (DVC hashes the file)")
        data[1000] ^= 0xFF
    elif damage == "cut in the data":
        data = data[:1000] + data[-300:]  # the zip's directory kept, the array cut short
    else:
        out = io.BytesIO()
        np.savez_compressed(out, x=x, y=y)
        data = out.getvalue()
    path.write_bytes(bytes(data))
    monkeypatch.setenv(npz.MEMORY_ENV, budget)
    with pytest.raises(
        DataError, match=r"^\S*train.npz: unreadable \(\w+: .*rerun `dvc repro split@image`"
    ) as err:
        load_split(path, torch.device("cpu"))
    assert "\n" not in str(err.value)


def test_a_bad_memory_budget_is_one_line(monkeypatch) -> None:
    monkeypatch.setenv(npz.MEMORY_ENV, "lots")
    with pytest.raises(DataError, match="REPROLAB_SPLIT_MEMORY_MB='lots': expected"):
        npz.memory_budget()


def test_baselines_score_a_split_left_on_disk_a_chunk_at_a_time(
    tmp_path: Path, monkeypatch
) -> None:
    """Val and test rows stay in their file and are scored a chunk at a time (here chunks
    of 7 rows): the selection, its scores and the test metrics are those of the arrays in
    memory, bit for bit."""
    from reprolab.learn.baselines import (
        evaluate_baselines,
        save_baselines,
        select_baselines,
        write_selection,
    )

    splits = {n: image_split(tmp_path / f"{n}.npz", seed=i) for i, n in enumerate(("a", "b"))}
    train, val = ({"x": x, "y": y} for x, y in splits.values())
    monkeypatch.setattr(npz, "CHUNK_BYTES", 7 * val["x"][0].nbytes)
    members = open_npz(tmp_path / "b.npz")
    on_disk = {"x": members["x"], "y": members["y"].load()}
    assert len(list(npz.row_chunks(on_disk["x"]))) == 18  # 120 rows: 17 of 7, then 1
    meta = {"classes": ["r", "g", "b"]}

    def whole(member: npz.Member) -> np.ndarray:
        raise AssertionError(f"{member.path.name}: loaded whole")

    monkeypatch.setattr(npz.Member, "load", whole)
    results = []
    for scored in (val, on_disk):  # the val split is the test split here: the same rows
        selected, fitted = select_baselines(
            ["logistic_regression"], train, scored, "classification", 0, 100
        )
        folder = tmp_path / ("disk" if scored is on_disk else "memory")
        save_baselines(fitted, folder)
        write_selection(selected, folder, folder / "val.json")
        test = evaluate_baselines(folder, scored, "classification", meta)
        results.append(([(s.value, s.val, s.grid) for s in selected], test))
    assert results[0] == results[1]
