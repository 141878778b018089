"""Any folder of images in torchvision's ImageFolder layout: ``root/<class>/<image>``.

The transfer-learning tutorial's layout with published splits, ``root/train/<class>/...``
plus ``root/val/<class>/...`` (or ``test/``), is recognised too: val/test becomes the
published test split. Images are resized to ``imagefolder.image_size`` square RGB, uint8,
when the split stage asks for them (``ImageRows``: a chunk at a time, in bounded memory).
Every image is decoded once while copied: a file that PIL cannot decode (empty, truncated,
corrupt) or a decompression bomb stops the download naming the user's file.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np

from reprolab.core.errors import DataError, ReprolabError, cut
from reprolab.core.io import read_json
from reprolab.data.fetch import Arrays

FILES: dict[str, str] = {}  # a user's own tree: DVC hashes every copied file instead
OPTIONS_FILE = "imagefolder.json"
TEST_DIRS = ("val", "test")
FIX_TREE = "replace or remove it in imagefolder.path, then rerun `dvc repro`"


def open_image(
    path: Path, mode: str, error: type[ReprolabError] = DataError, advice: str = FIX_TREE
):
    """``path`` decoded whole into ``mode`` ("L", "RGB"). A file PIL cannot identify or decode
    (empty, truncated, corrupt) or one over PIL's decompression-bomb limit
    (``Image.MAX_IMAGE_PIXELS``, refused before any pixel is decoded) raises ``error``: one
    line naming ``path`` and ``advice``."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # Over MAX_IMAGE_PIXELS PIL only warns (an error from twice that): refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.convert(mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise error(
            f"{path}: refused, a possible decompression bomb ({err}); downscale it below "
            f"{Image.MAX_IMAGE_PIXELS} pixels, or {advice}"
        ) from None
    except Exception as err:  # PIL's decoders raise OSError, SyntaxError, ValueError, EOFError...
        lines = str(err).strip().splitlines()
        reason = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
        raise error(f"{path}: cannot decode as an image ({reason}); {advice}") from None


def copy_into(dest: Path, options: dict) -> None:
    """Copy the image files of ``options['path']`` into ``dest`` and record the options."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if not options.get("path"):
        raise DataError("imagefolder.path is not set: point it at a root/<class>/<image> tree")
    root = Path(options["path"]).expanduser()
    if not root.is_dir():
        raise DataError(f"imagefolder.path: folder {str(root)!r} does not exist")
    _no_empty_class(root, IMG_EXTENSIONS)
    _same_classes(root)
    for file in sorted(root.rglob("*")):
        if file.is_file() and file.suffix.lower() in IMG_EXTENSIONS:
            open_image(file, "RGB")  # a bad file is named here, not as its copy in a temp dir
            target = dest / file.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
    (dest / OPTIONS_FILE).write_text(json.dumps({"image_size": options["image_size"]}) + "\n")


def _no_empty_class(root: Path, extensions: tuple[str, ...]) -> None:
    """A class folder without images would silently vanish from the classes: refuse it."""
    split_dirs = [root / d for d in ("train", *TEST_DIRS) if (root / d).is_dir()]
    for base in split_dirs if (root / "train").is_dir() else [root]:
        for folder in sorted(p for p in base.iterdir() if p.is_dir()):
            if not any(f.is_file() and f.suffix.lower() in extensions for f in folder.rglob("*")):
                raise DataError(
                    f"imagefolder.path: class folder {folder} holds no image "
                    f"({', '.join(extensions)}); add images to it or remove it"
                )


def _same_classes(root: Path) -> None:
    """The class folders ``load`` will compare, checked here in the user's tree: ``load`` reads
    the copy in a temp folder, a name that means nothing to the user."""
    train = root / "train" if (root / "train").is_dir() else root
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"imagefolder.path: {train} holds no class folder (<class>/<image>)")
    test_dir = next((root / d for d in TEST_DIRS if (root / d).is_dir()), None)
    if train == root or test_dir is None:
        return
    test_classes = sorted(p.name for p in test_dir.iterdir() if p.is_dir())
    if test_classes != classes:
        odd = sorted(set(test_classes) ^ set(classes))
        raise DataError(
            f"imagefolder.path: {test_dir}: its classes differ from {train}'s (in one only: "
            f"{cut(', '.join(odd), 120)}); give both the same class folders"
        )


class ImageRows:
    """A tree's images as uint8 (N, 3, size, size) rows, each decoded and resized only when
    asked for (``rows[index]``): the split stage streams a tree of any size through them in
    chunks, so no stage holds the decoded tree whole."""

    dtype = np.dtype(np.uint8)

    def __init__(self, files: list[str], size: int) -> None:
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), 3, self.size, self.size)

    def __getitem__(self, index) -> np.ndarray:
        from PIL import Image

        if isinstance(index, (int, np.integer)):
            return self[np.array([index])][0]
        picked = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
        out = np.empty((len(picked), 3, self.size, self.size), np.uint8)
        for row, i in enumerate(picked.reshape(-1)):
            image = open_image(Path(self.files[i]), "RGB")
            out[row] = np.asarray(image.resize((self.size, self.size), Image.BILINEAR)).transpose(
                2, 0, 1
            )
        return out


def _scan(folder: Path, class_to_idx: dict[str, int] | None = None):
    """The tree's image files and labels (ImageFolder's order); nothing is decoded here."""
    from torchvision.datasets import ImageFolder

    data = ImageFolder(str(folder), loader=lambda p: p)
    if class_to_idx is not None and data.class_to_idx != class_to_idx:
        raise DataError(
            f"{folder}: classes {data.classes} differ from train's {list(class_to_idx)}"
        )
    return [path for path, _ in data.samples], np.asarray(data.targets, dtype=np.int64), data


def load(raw_dir: Path) -> Arrays:
    size = read_json(raw_dir / OPTIONS_FILE, "download@image", ("image_size",), DataError)[
        "image_size"
    ]
    test_dir = next((raw_dir / d for d in TEST_DIRS if (raw_dir / d).is_dir()), None)
    if (raw_dir / "train").is_dir() and test_dir is not None:
        files_train, y_train, train = _scan(raw_dir / "train")
        files_test, y_test, _ = _scan(test_dir, train.class_to_idx)
        y = np.concatenate([y_train, y_test])
        mask = np.arange(len(y)) >= len(y_train)
        x = ImageRows(files_train + files_test, size)
        return Arrays(x=x, y=y, classes=train.classes, test_mask=mask)
    try:
        files, y, data = _scan(raw_dir)
    except FileNotFoundError as err:  # torchvision: "Couldn't find any class folder"
        raise DataError(f"imagefolder: {err}") from None
    return Arrays(x=ImageRows(files, size), y=y, classes=data.classes)
