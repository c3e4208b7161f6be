"""Indexes a dataset root in the challenge layout: classes, train/val records, test files.

ROOT/train/<class>/*.jpg (any of jpg, jpeg, png, tif, tiff), an optional ROOT/val/<class>/
used as the validation set as is, and ROOT/test/*. Without ROOT/val the validation files are
split off per class by a hash of their path, so the split is deterministic, stratified, and a
file stays on its side when files are added (to any class).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from camjax.cameras import CHALLENGE_CLASSES, canonical_class_name, is_manipulated_from_fname

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


@dataclasses.dataclass(frozen=True)
class Record:
    path: str
    label: int
    class_name: str
    manipulated: bool = False  # already manipulated (a pseudo-labelled *_manip test file): never again


@dataclasses.dataclass
class DatasetIndex:
    classes: tuple[str, ...]
    train: list[Record]
    val: list[Record]
    test: list[str]  # sorted test file paths

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def order_classes(names) -> tuple[str, ...]:
    """Challenge classes in the challenge's order, then the others alphabetically."""
    names = set(names)
    known = [c for c in CHALLENGE_CLASSES if c in names]
    return tuple(known + sorted(names - set(known)))


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _class_folders(split_dir: Path) -> dict[str, Path]:
    """Canonical class name -> folder; two folders naming the same class is an error."""
    folders: dict[str, Path] = {}
    for d in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = canonical_class_name(d.name)
        if name in folders:
            raise ValueError(f"{split_dir}: folders {folders[name].name!r} and {d.name!r} both name class {name!r}")
        folders[name] = d
    return folders


def _scan_split(split_dir: Path) -> dict[str, list[Path]]:
    folders = _class_folders(split_dir)
    files = {name: _image_files(d) for name, d in folders.items()}
    empty = sorted(str(folders[n]) for n, f in files.items() if not f)
    if empty:
        raise ValueError(
            f"{split_dir}: class folders without images ({', '.join(IMAGE_EXTENSIONS)}): {', '.join(empty)}"
        )
    return files


def _split_key(rel_path: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the file's relative path and the seed."""
    digest = hashlib.blake2b(f"{seed}:{rel_path}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def _split_class(files: list[Path], train_dir: Path, fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """The lowest-keyed `fraction` of a class goes to validation (one at least, when >= 2 files)."""
    if fraction <= 0 or len(files) < 2:
        return files, []
    n_val = min(max(1, int(round(fraction * len(files)))), len(files) - 1)
    keyed = sorted(files, key=lambda p: _split_key(p.relative_to(train_dir).as_posix(), seed))
    val = set(keyed[:n_val])
    return [p for p in files if p not in val], [p for p in files if p in val]


def scan_root(root: str | os.PathLike, *, val_fraction: float = 0.1, seed: int = 0) -> DatasetIndex:
    """Indexes `root` (see the module docstring); errors name the path and the problem."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist or is not a folder")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise FileNotFoundError(f"{root}: no train/ folder (expected ROOT/train/<class>/*.jpg)")
    train_files = _scan_split(train_dir)
    if len(train_files) < 2:
        raise ValueError(f"{train_dir}: need at least 2 class folders, found {sorted(train_files)}")
    classes = order_classes(train_files)
    label = {c: i for i, c in enumerate(classes)}

    val_dir = root / "val"
    if val_dir.is_dir():
        val_files = _scan_split(val_dir)
        unknown = sorted(set(val_files) - set(classes))
        if unknown:
            raise ValueError(f"{val_dir}: classes {unknown} have no train/ folder")
    else:
        val_files = {}
        for c in classes:
            train_files[c], val_files[c] = _split_class(train_files[c], train_dir, val_fraction, seed)

    def records(files: dict[str, list[Path]]) -> list[Record]:
        return [Record(str(p), label[c], c) for c in classes for p in files.get(c, [])]

    return DatasetIndex(classes, records(train_files), records(val_files), list_test_files(root, required=False))


def add_extra_train(index: DatasetIndex, extra_root: str | os.PathLike) -> DatasetIndex:
    """`index` with the files of EXTRA/train/<class>/ (e.g. `camjax.pseudolabel` output) added
    to its training split only: validation, which picks checkpoints, stays on the original files."""
    train_dir = Path(extra_root) / "train"
    if not train_dir.is_dir():
        raise FileNotFoundError(f"data.extra {extra_root}: no train/ folder (expected EXTRA/train/<class>/*)")
    files = _scan_split(train_dir)
    unknown = sorted(set(files) - set(index.classes))
    if unknown:
        raise ValueError(f"{train_dir}: classes {unknown} are not among the dataset's {list(index.classes)}")
    held_out = {os.path.realpath(r.path) for r in index.val}
    leaked = [str(p) for c in files for p in files[c] if os.path.realpath(p) in held_out]
    if leaked:
        raise ValueError(f"{train_dir}: {len(leaked)} files are validation files, e.g. {leaked[0]}")
    label = {c: i for i, c in enumerate(index.classes)}
    extra = [
        Record(str(p), label[c], c, manipulated=is_manipulated_from_fname(p.name))
        for c in index.classes
        for p in files.get(c, [])
    ]
    return dataclasses.replace(index, train=index.train + extra)


OUTLIER = -1  # the label of a photo from none of the classes (`add_outliers`)


def add_outliers(index: DatasetIndex, outlier_root: str | os.PathLike) -> DatasetIndex:
    """`index` with every image of OUTLIERS/train/<camera>/ added to its training split under
    the label `OUTLIER`: photos of cameras that are none of the classes, which the loss trains
    towards a uniform prediction (outlier exposure, Hendrycks et al. 2019), so that "none of
    these" is something the model has seen. Validation, and so calibration, stays on the classes."""
    train_dir = Path(outlier_root) / "train"
    if not train_dir.is_dir():
        raise FileNotFoundError(f"data.outliers {outlier_root}: no train/ folder (expected OUTLIERS/train/<camera>/*)")
    files = _scan_split(train_dir)
    if not files:
        raise ValueError(f"data.outliers {train_dir}: no camera folders with images")
    ours = {os.path.realpath(r.path) for r in index.train + index.val}
    shared = [str(p) for c in files for p in files[c] if os.path.realpath(p) in ours]
    if shared:
        raise ValueError(f"data.outliers {train_dir}: {len(shared)} files are the dataset's own, e.g. {shared[0]}")
    outliers = [Record(str(p), OUTLIER, f"outlier:{c}") for c in sorted(files) for p in files[c]]
    return dataclasses.replace(index, train=index.train + outliers)


def keep_classes(index: DatasetIndex, names) -> DatasetIndex:
    """`index` restricted to the classes `names` (in the index's order, relabelled 0..k-1);
    the test files stay, so cameras held out of training can be scored as unknown ones."""
    unknown = sorted(set(names) - set(index.classes))
    if unknown:
        raise ValueError(f"data.classes: {unknown} are not among the dataset's classes {list(index.classes)}")
    classes = tuple(c for c in index.classes if c in set(names))
    label = {c: i for i, c in enumerate(classes)}

    def kept(records):
        return [dataclasses.replace(r, label=label[r.class_name]) for r in records if r.class_name in label]

    return DatasetIndex(classes, kept(index.train), kept(index.val), index.test)


def list_test_files(root: str | os.PathLike, *, required: bool = True) -> list[str]:
    """Sorted image paths in ROOT/test (an error when `required` and there are none)."""
    test_dir = Path(root) / "test"
    files = [str(p) for p in _image_files(test_dir)] if test_dir.is_dir() else []
    if required and not files:
        raise FileNotFoundError(f"{test_dir}: no test images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def class_counts(records: list[Record], num_classes: int) -> np.ndarray:
    return np.bincount([r.label for r in records if r.label != OUTLIER], minlength=num_classes)


def class_weights(index: DatasetIndex) -> np.ndarray:
    """Per-class loss weights n / (C * n_c): a class-balanced loss with mean sample weight 1."""
    counts = class_counts(index.train, index.num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
    return weights.astype(np.float32)
