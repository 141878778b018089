"""Bad input files for `reprolab predict` and the imagefolder source: one line naming the
user's file (and CSV row and column), never a traceback, never a silent wrong answer."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reprolab.cli import main
from reprolab.core.errors import DataError
from reprolab.data.fetch import fetch_dataset
from reprolab.learn.checkpoints import save_model
from reprolab.models._base import ModelSpec, build_model

FEATURES = ["MedInc", "HouseAge", "AveRooms"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny tabular regressor (3 named features) and an 8x8 grey-image classifier."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    tabular = ModelSpec("mlp", {"hidden": [4]}, (3,), 1, [1.0] * 3, [2.0] * 3, (0.5, 1.0))
    about = {"task": "regression", "classes": [], "input_max": 10.0, "features": FEATURES}
    save_model(build_model(tabular), tabular, root / "tabular", about)
    image = ModelSpec("mlp", {"hidden": [4]}, (1, 8, 8), 3, [4.0], [5.0])
    about = {"task": "classification", "classes": ["a", "b", "c"], "input_max": 16.0}
    save_model(build_model(image), image, root / "image", about)
    return {"tabular": root / "tabular", "image": root / "image"}


def _predict(capsys, model: Path, *files: Path) -> tuple[int | str, list[str]]:
    try:
        main(["predict", "--model", str(model), *map(str, files)])
    except SystemExit as end:
        capsys.readouterr()
        return end.code, []
    lines = capsys.readouterr().out.strip().splitlines()[1:]
    return 0, [line.split("\t")[0] for line in lines]


def _refused(capsys, model: Path, file: Path, *named: str) -> str:
    code, _ = _predict(capsys, model, file)
    assert isinstance(code, str) and code.startswith(f"error: {file}"), code
    assert "\n" not in code and all(n in code for n in named), code
    return code


@pytest.mark.parametrize(
    ("row", "named"),
    [
        ("1,nan,3", ["row 1", "column 2 (HouseAge)", "'nan'"]),
        ("1,2,inf", ["row 1", "column 3 (AveRooms)", "'inf'"]),
        ("-Infinity,2,3", ["row 1", "column 1 (MedInc)"]),
        ("1,2,1e999", ["row 1", "column 3", "1e999"]),
        ("1,1e30,3", ["row 1", "column 2", "1e30", "1e+06"]),
        ("1,2,", ["row 1", "column 3", "''", "not a number"]),
        ("1,2x,3", ["row 1", "column 2", "'2x'", "not a number"]),
    ],
)
def test_a_bad_csv_value_is_named_by_file_row_and_column(
    models, row: str, named: list[str], tmp_path: Path, capsys
) -> None:
    path = tmp_path / "rows.csv"
    path.write_text(f"{row}\n1,2,3\n")
    _refused(capsys, models["tabular"], path, *named)


def test_a_typo_in_the_first_row_is_an_error_not_a_header(models, tmp_path, capsys) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("1,2,3O\n4,5,6\n")  # 3O: a letter O typed for a zero
    _refused(capsys, models["tabular"], path, "row 1", "column 3 (AveRooms)", "'3O'")
    path.write_text("MedInc,HouseAge,Rooms\n4,5,6\n")  # no number, but not the features
    _refused(capsys, models["tabular"], path, "row 1", "column 3", "'Rooms'", "AveRooms")
    path.write_text("a,b\n4,5,6\n")  # no number, the wrong column count
    _refused(capsys, models["tabular"], path, "row 1", "2 columns", "takes 3")


def test_a_header_naming_the_features_is_skipped(models, tmp_path, capsys) -> None:
    path = tmp_path / "rows.csv"
    path.write_text(" medinc,HouseAge,AveRooms\n4,5,6\n\n7,8,9\n")
    code, sources = _predict(capsys, models["tabular"], path)
    assert code == 0 and sources == [f"{path}:2", f"{path}:4"], (code, sources)
    path.write_text("4,5,6\n")  # no header at all: the first row is data
    code, sources = _predict(capsys, models["tabular"], path)
    assert code == 0 and sources == [f"{path}:1"], (code, sources)
    pixels = tmp_path / "pixels.csv"  # an image model records no feature names
    pixels.write_text(",".join(f"p{i}" for i in range(64)) + "\n" + ",".join(["3"] * 64) + "\n")
    code, sources = _predict(capsys, models["image"], pixels)
    assert code == 0 and sources == [f"{pixels}:2"], (code, sources)


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming ``width`` x ``height`` grey pixels, then IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _bad_images(folder: Path) -> dict[str, tuple[Path, str]]:
    """Real bad files: {case: (path, what the error says)}."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.png"
    Image.fromarray((np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)).save(good)
    data = good.read_bytes()
    cases = {
        "empty": (b"", "cannot decode"),
        "text": (b"not an image at all\n", "cannot decode"),
        "truncated": (data[: len(data) // 2], "cannot decode"),
        "jpeg-truncated": (None, "cannot decode"),
        "bomb": (_png_header(20_000, 20_000), "decompression bomb"),
        "bomb-warning": (_png_header(10_000, 10_000), "decompression bomb"),
    }
    out = {}
    for name, (content, says) in cases.items():
        suffix = ".jpg" if name.startswith("jpeg") else ".png"
        path = folder / f"{name}{suffix}"
        if content is None:
            Image.open(good).convert("RGB").save(path, quality=90)
            content = path.read_bytes()[:300]
        path.write_bytes(content)
        out[name] = (path, says)
    return out


def test_predict_names_an_image_it_cannot_decode(models, tmp_path: Path, capsys) -> None:
    for name, (path, says) in _bad_images(tmp_path).items():
        code = _refused(capsys, models["image"], path, says)
        assert "Traceback" not in code, name
    code, sources = _predict(capsys, models["image"], tmp_path / "good.png")
    assert code == 0 and sources == [str(tmp_path / "good.png")]


def test_an_image_for_a_tabular_model_is_one_line(models, tmp_path: Path, capsys) -> None:
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "scan.png")
    _refused(capsys, models["tabular"], tmp_path / "scan.png", "rows of 3 features", "CSV")


@pytest.mark.parametrize(
    "case", ["empty", "text", "truncated", "jpeg-truncated", "bomb", "bomb-warning"]
)
def test_imagefolder_names_the_users_bad_image(case: str, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for label in ("ants", "bees"):
        (tree / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (12, 12), (i * 40, 0, 0)).save(tree / label / f"{i}.png")
    path, says = _bad_images(tmp_path / "bad")[case]
    target = tree / "bees" / path.name
    path.replace(target)
    options = {"path": str(tree), "image_size": 8}
    with pytest.raises(DataError) as caught:
        fetch_dataset("imagefolder", tmp_path / "raw", options=options)
    message = str(caught.value)
    assert message.startswith(f"{target}: ") and says in message and "\n" not in message, message
    assert "imagefolder.path" in message
    assert not (tmp_path / "raw").exists()


def test_a_folder_as_input_or_the_baselines_as_model_is_one_line(
    models, tmp_path: Path, capsys
) -> None:
    (tmp_path / "scans").mkdir()
    _refused(capsys, models["image"], tmp_path / "scans", "a folder; give its image or CSV")
    baselines = tmp_path / "baselines" / "image"
    baselines.mkdir(parents=True)
    (baselines / "baselines.skops").write_bytes(b"")
    (tmp_path / "row.csv").write_text(",".join(["0"] * 64) + "\n")
    code, _ = _predict(capsys, baselines, tmp_path / "row.csv")
    assert isinstance(code, str) and "the scikit-learn baselines, not a network" in code


def test_a_tampered_model_folder_is_refused_like_a_registry_version(
    models, tmp_path: Path, capsys
) -> None:
    """model.pt replaced (md5 != model.json's weights_md5): a folder predicted silently; only
    registry versions were checked."""
    import shutil

    folder = tmp_path / "image"
    shutil.copytree(models["image"], folder)
    weights = torch.load(folder / "model.pt", weights_only=True)
    torch.save({k: v + 1 for k, v in weights.items()}, folder / "model.pt")
    (tmp_path / "row.csv").write_text(",".join(["0"] * 64) + "\n")
    code, rows = _predict(capsys, folder, tmp_path / "row.csv")
    assert isinstance(code, str) and code.startswith(f"error: {folder}: its model.pt has md5 ")
    assert f"`dvc checkout {folder}` restores them" in code and "\n" not in code, code
    assert _predict(capsys, models["image"], tmp_path / "row.csv")[0] == 0


def test_a_newline_or_tab_in_an_input_path_keeps_one_output_row(
    models, tmp_path: Path, capsys
) -> None:
    odd = [tmp_path / "a\nb.png", tmp_path / "c\td.png", tmp_path / "e\\f.png"]
    for path in odd:
        Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(np.uint8)).save(path)
    main(["predict", "--model", str(models["image"]), *map(str, odd)])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4, lines
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(row) == 3 for row in rows), rows
    escaped = ["a\\nb.png", "c\\td.png", "e\\\\f.png"]
    assert [row[0] for row in rows] == [f"{tmp_path}/{name}" for name in escaped]
