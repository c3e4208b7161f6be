"""A TFDS builder, `camera_model_id`, that packs a dataset root into array_record shards.

Each example keeps the original file's bytes untouched (re-encoding would destroy the trace),
with its label, stored size, EXIF Model and its path relative to the root (`fname`). Splits
are those of `camjax.data.sources.scan_root` - `train`, `validation` (ROOT/val, or the
deterministic per-class split by val_fraction and seed) - plus `test` from ROOT/test when it
holds images (label -1: unknown). Examples are written in scan_root's order, so record i of a
split is example i of its data source. Needs no TensorFlow:

    python -m camjax.data.tfds_builder --root ROOT --data_dir DIR [--val_fraction F] [--seed S]

does what `tfds build` does. The `tfds` command itself imports TensorFlow; where that is
installed, this builds the same dataset (with the default split, val_fraction 0.1 and seed 0):

    tfds build camera_model_id --imports camjax.data.tfds_builder \
        --manual_dir ROOT --data_dir DIR --file_format array_record

Read it with `tfds.data_source('camera_model_id', split=..., data_dir=DIR)` (this module need
not be imported), e.g. as `grain.MapDataset.source(...)`; `load_index` and `records` give the
folder reader's records with `path` = fname, and `BytesReader` returns a record's bytes.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from camjax import cli
from camjax.data.decode import BadImageError, decode_image
from camjax.data.sources import DatasetIndex, Record, scan_root

NAME = "camera_model_id"
SPLITS = ("train", "validation", "test")
_EXIF_MODEL = 0x0110


def image_size(data: bytes, name: str) -> tuple[int, int]:
    """(height, width) as stored, from the header alone."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except Image.UnidentifiedImageError as e:
        raise BadImageError(name, "not an image file (unrecognised format)") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadImageError(name, f"cannot read the image header ({e})") from e
    return height, width


def exif_model(data: bytes) -> str:
    """The EXIF Model string ('' when absent or unreadable)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            value = im.getexif().get(_EXIF_MODEL, "")
    except (OSError, ValueError, SyntaxError, TypeError, KeyError):
        return ""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).strip("\x00 ").strip()


class CameraModelId(tfds.core.GeneratorBasedBuilder):
    """Camera model identification images, original bytes (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Original file bytes, label, stored size, EXIF model, fname."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "manual_dir is a dataset root in the challenge layout: ROOT/train/<class>/*.jpg, "
        "optionally ROOT/val/<class>/ and ROOT/test/*."
    )

    def __init__(self, *, val_fraction: float = 0.1, seed: int = 0, **kwargs):
        # Splits follow scan_root(val_fraction, seed); reading uses what the build stored.
        kwargs.setdefault("file_format", "array_record")
        self._val_fraction, self._split_seed = float(val_fraction), int(seed)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Camera model identification: the original image files with their camera label.",
            features=tfds.features.FeaturesDict(
                {
                    # Raw bytes, never decoded on write or read: the trace lives in them.
                    "image": tfds.features.Tensor(shape=(), dtype=np.object_),
                    "label": tfds.features.ClassLabel(),  # names set from the root at build time
                    "fname": tfds.features.Text(),
                    "height": tfds.features.Scalar(dtype=np.int32),
                    "width": tfds.features.Scalar(dtype=np.int32),
                    "exif_model": tfds.features.Text(),
                }
            ),
            homepage="https://www.kaggle.com/c/sp-society-camera-model-identification",
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # example i = record i, in scan_root's order
        )

    def _split_generators(self, dl_manager):
        root = Path(dl_manager.manual_dir).resolve()
        index = scan_root(root, val_fraction=self._val_fraction, seed=self._split_seed)
        self.info.features["label"].names = list(index.classes)
        splits = {
            "train": index.train,
            "validation": index.val,
            "test": [Record(p, -1, "") for p in index.test],
        }
        splits = {k: v for k, v in splits.items() if v}
        # The record lists, so that readers need not read every file's bytes to list them.
        self.info.metadata.update(
            root=str(root),
            val_fraction=self._val_fraction,
            seed=self._split_seed,
            records={
                k: [[Path(r.path).relative_to(root).as_posix(), r.label] for r in recs] for k, recs in splits.items()
            },
        )
        return {k: self._generate_examples(root, recs) for k, recs in splits.items()}

    def _generate_examples(self, root: Path, split_records: list[Record]):
        for i, r in enumerate(split_records):
            data = Path(r.path).read_bytes()
            height, width = image_size(data, r.path)
            example = {
                "image": data,
                "label": r.label,
                "fname": Path(r.path).relative_to(root).as_posix(),
                "height": height,
                "width": width,
                "exif_model": exif_model(data),
            }
            yield i, example


def build(
    root: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    overwrite: bool = False,
) -> CameraModelId:
    """Builds (or reuses) DIR/camera_model_id/<version> from `root`; a build made from another
    root or split is an error unless `overwrite`."""
    builder = CameraModelId(data_dir=os.fspath(data_dir), val_fraction=val_fraction, seed=seed)
    if builder.is_prepared():
        meta = builder.info.metadata or {}
        wanted = {"root": str(Path(root).resolve()), "val_fraction": float(val_fraction), "seed": int(seed)}
        found = {k: meta.get(k) for k in wanted}
        if found != wanted and not overwrite:
            raise ValueError(
                f"{builder.data_path}: already built with {found}, not {wanted} (pass overwrite=True / --overwrite)"
            )
        if overwrite:
            builder.data_path.rmtree()
            builder = CameraModelId(data_dir=os.fspath(data_dir), val_fraction=val_fraction, seed=seed)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(root)))
    return builder


def _prepared(data_dir: str | os.PathLike) -> CameraModelId:
    builder = CameraModelId(data_dir=os.fspath(data_dir))
    if not builder.is_prepared() or "records" not in (builder.info.metadata or {}):
        raise FileNotFoundError(
            f"{data_dir}: no {NAME} dataset (version {CameraModelId.VERSION}); build it with "
            f"`python -m camjax.data.tfds_builder --root ROOT --data_dir {data_dir}`"
        )
    return builder


def _check_split(builder: CameraModelId, split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split not in builder.info.splits:
        raise ValueError(f"{builder.data_path}: no {split!r} split (it has {sorted(builder.info.splits)})")


def records(data_dir: str | os.PathLike, split: str) -> list[Record]:
    """The split's records in example order: path = fname (relative to the root), label and
    class name as scan_root gives them; test records have label -1 and class name ''."""
    builder = _prepared(data_dir)
    _check_split(builder, split)
    names = builder.info.features["label"].names
    return [Record(f, int(y), names[y] if y >= 0 else "") for f, y in builder.info.metadata["records"][split]]


def load_index(
    data_dir: str | os.PathLike, *, val_fraction: float | None = None, seed: int | None = None
) -> DatasetIndex:
    """The folder reader's DatasetIndex, with fnames for paths; a `val_fraction` or `seed`
    other than the build's is an error (the split is fixed when the dataset is built)."""
    builder = _prepared(data_dir)
    meta = builder.info.metadata
    for key, value in (("val_fraction", val_fraction), ("seed", seed)):
        if value is not None and value != meta[key]:
            raise ValueError(f"{builder.data_path}: built with {key}={meta[key]}, asked for {value}; rebuild it")
    splits = {s: records(data_dir, s) if s in builder.info.splits else [] for s in SPLITS}
    classes = tuple(builder.info.features["label"].names)
    return DatasetIndex(classes, splits["train"], splits["validation"], [r.path for r in splits["test"]])


def data_source(data_dir: str | os.PathLike, split: str):
    """The split as a random-access source (len, [i]) of feature dicts; bytes stay bytes."""
    _check_split(_prepared(data_dir), split)
    return tfds.data_source(NAME, split=split, data_dir=os.fspath(data_dir))


def decode_record(example: dict, *, min_size: int = 0) -> np.ndarray:
    """The example's image as decode_image decodes the original file."""
    fname = example["fname"]
    name = fname.decode() if isinstance(fname, bytes) else str(fname)
    return decode_image(example["image"], name=name, min_size=min_size)


class BytesReader:
    """fname -> (original bytes, fname), read from the dataset's data sources; a picklable
    stand-in for reading the file (the sources open lazily in each process)."""

    def __init__(self, data_dir: str | os.PathLike):
        self.data_dir = os.fspath(data_dir)
        meta = _prepared(self.data_dir).info.metadata["records"]
        self._where = {f: (split, i) for split, rows in meta.items() for i, (f, _) in enumerate(rows)}
        self._sources: dict = {}

    def __getstate__(self):
        return {**self.__dict__, "_sources": {}}

    def __call__(self, fname: str) -> tuple[bytes, str]:
        if fname not in self._where:
            raise BadImageError(fname, f"not in the {NAME} dataset under {self.data_dir}")
        split, i = self._where[fname]
        if split not in self._sources:
            self._sources[split] = tfds.data_source(NAME, split=split, data_dir=self.data_dir)
        return self._sources[split][i]["image"], fname


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m camjax.data.tfds_builder", description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="dataset root in the challenge layout")
    parser.add_argument("--data_dir", required=True, help="TFDS data dir (writes DIR/camera_model_id/<version>)")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="per class, as config.data.val_fraction")
    parser.add_argument("--seed", type=int, default=0, help="the split's seed, as config.seed")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing build")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    builder = cli.run_or_exit(
        build, args.root, args.data_dir, val_fraction=args.val_fraction, seed=args.seed, overwrite=args.overwrite
    )
    counts = ", ".join(f"{k}={v.num_examples}" for k, v in sorted(builder.info.splits.items()))
    print(f"wrote {builder.data_path} ({counts}) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
