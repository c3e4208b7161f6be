"""The camera_model_id TFDS builder: original bytes, the folder reader's records, Grain reads."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from camjax_testdata import make_challenge_tree, texture
from PIL import Image

from camjax.data import sources, tfds_builder
from camjax.data.decode import BadImageError, decode_image

CLASSES = ("HTC-1-M7", "iPhone-4s", "iPhone-6")
EXIF_FILE = "train/iPhone-6/iPhone-6_2.jpg"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A 3 classes x 3 files root (one JPEG with an EXIF Model, one PNG) and its build."""
    root = make_challenge_tree(tmp_path_factory.mktemp("root"), classes=CLASSES, sizes=((64, 96), (80, 72)))
    exif = Image.Exif()
    exif[0x0110] = "Nexus 5X"
    Image.fromarray(texture(72, 88, 7)).save(root / EXIF_FILE, quality=92, exif=exif.tobytes())
    Image.fromarray(texture(40, 56, 8)).save(root / "train/HTC-1-M7/extra.png")
    data_dir = tmp_path_factory.mktemp("tfds")
    tfds_builder.build(root, data_dir)
    return root, data_dir


def _relative(records, root):
    return [sources.Record(Path(r.path).relative_to(root).as_posix(), r.label, r.class_name) for r in records]


def _examples(data_dir, split):
    src = tfds.data_source(tfds_builder.NAME, split=split, data_dir=str(data_dir))
    return [src[i] for i in range(len(src))]


def test_bytes_are_the_original_files(built):
    root, data_dir = built
    seen = {}
    for split in tfds_builder.SPLITS:
        for ex in _examples(data_dir, split):
            seen[ex["fname"].decode()] = _sha(ex["image"])
    on_disk = {p.relative_to(root).as_posix(): _sha(p.read_bytes()) for p in root.rglob("*") if p.is_file()}
    assert seen == on_disk


def test_records_match_the_folder_reader(built):
    root, data_dir = built
    index = sources.scan_root(root)
    assert tfds_builder.records(data_dir, "train") == _relative(index.train, root)
    assert tfds_builder.records(data_dir, "validation") == _relative(index.val, root)
    loaded = tfds_builder.load_index(data_dir, val_fraction=0.1, seed=0)
    assert loaded.classes == index.classes == CLASSES
    assert loaded.train == _relative(index.train, root) and loaded.val == _relative(index.val, root)
    assert loaded.test == [Path(p).relative_to(root).as_posix() for p in index.test]
    assert [r.label for r in tfds_builder.records(data_dir, "test")] == [-1] * len(index.test)
    for split in tfds_builder.SPLITS:  # example i of the source is record i
        rows = [(ex["fname"].decode(), ex["label"]) for ex in _examples(data_dir, split)]
        assert rows == [(r.path, r.label) for r in tfds_builder.records(data_dir, split)]


def test_size_and_exif_model(built):
    root, data_dir = built
    for ex in _examples(data_dir, "train") + _examples(data_dir, "validation"):
        with Image.open(root / ex["fname"].decode()) as im:
            assert (ex["width"], ex["height"]) == im.size
        assert ex["exif_model"].decode() == ("Nexus 5X" if ex["fname"].decode() == EXIF_FILE else "")


def test_grain_decodes_like_the_files(built):
    root, data_dir = built
    src = tfds.data_source(tfds_builder.NAME, split="train", data_dir=str(data_dir))
    ds = grain.MapDataset.source(src).map(lambda ex: (ex["fname"].decode(), tfds_builder.decode_record(ex)))
    frames = dict(ds)
    assert len(frames) == len(sources.scan_root(root).train)
    for fname, frame in frames.items():
        np.testing.assert_array_equal(frame, decode_image(root / fname))
    reader = pickle.loads(pickle.dumps(tfds_builder.BytesReader(data_dir)))  # as Grain workers get it
    assert reader(EXIF_FILE) == ((root / EXIF_FILE).read_bytes(), EXIF_FILE)
    with pytest.raises(BadImageError, match="missing.jpg"):
        reader("train/iPhone-6/missing.jpg")


def test_split_is_fixed_at_build_time(built, tmp_path, capsys):
    root, data_dir = built
    with pytest.raises(ValueError, match="seed"):
        tfds_builder.load_index(data_dir, seed=1)
    with pytest.raises(ValueError, match="already built"):
        tfds_builder.build(root, data_dir, val_fraction=0.4)
    tfds_builder.main(["--root", str(root), "--data_dir", str(tmp_path), "--val_fraction", "0.4", "--seed", "3"])
    assert "validation=" in capsys.readouterr().out
    index = sources.scan_root(root, val_fraction=0.4, seed=3)
    assert tfds_builder.records(tmp_path, "validation") == _relative(index.val, root)
    assert tfds_builder.records(tmp_path, "train") == _relative(index.train, root)


def test_errors_name_the_problem(built, tmp_path):
    data_dir = built[1]
    with pytest.raises(FileNotFoundError, match="tfds_builder --root"):
        tfds_builder.records(tmp_path, "train")
    with pytest.raises(ValueError, match="split must be"):
        tfds_builder.records(data_dir, "val")
    bad = make_challenge_tree(tmp_path / "bad", classes=CLASSES[:2], sizes=((40, 48),), test_per_class=0)
    (bad / "train/iPhone-4s/iPhone-4s_1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(BadImageError, match="iPhone-4s_1.jpg: not an image"):
        tfds_builder.build(bad, tmp_path / "out")
