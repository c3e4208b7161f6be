"""Pseudo-label rounds: confident test predictions copied as an extra training source, and
`data.extra` merging them into the training split only."""

import csv
import dataclasses
import os

import ml_collections
import numpy as np
import pytest
from camjax_testdata import make_challenge_tree, save, texture
from PIL import Image
from test_train_evaluate import tiny_config as train_tiny_config

from camjax import assembly, pseudolabel, trainer
from camjax.data import sources

CLASSES = ("HTC-1-M7", "iPhone-4s", "Sony-NEX-7")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_challenge_tree(tmp_path_factory.mktemp("data"), classes=CLASSES, per_class=5, test_per_class=2)


def tiny_config(root, **overrides):
    """The end-to-end tests' tiny camnet run, one epoch, evaluated on 4 tiles per test file."""
    return train_tiny_config(root, **{"num_epochs": 1, "log_every": 3, "eval.max_tiles": 4, **overrides})


def test_add_extra_train_joins_the_training_split_only(root, tmp_path):
    extra = tmp_path / "pseudo"
    save(texture(64, 64, 1), extra / "train" / "iPhone-4s" / "img_0000001_unalt.tif")
    save(texture(64, 64, 2), extra / "train" / "sony_nex_7" / "img_0000002_manip.tif")
    index = sources.scan_root(root)
    merged = sources.add_extra_train(index, extra)
    assert merged.val == index.val and merged.test == index.test and merged.classes == index.classes
    assert merged.train[: len(index.train)] == index.train
    added = merged.train[len(index.train) :]
    assert [(os.path.basename(r.path), r.label, r.manipulated) for r in added] == [
        ("img_0000001_unalt.tif", 1, False),
        ("img_0000002_manip.tif", 2, True),
    ]

    # A file that arrived manipulated trains flagged, is never manipulated again, and has no
    # auxiliary target (-1: an all-zero one-hot).
    from camjax.data import train_loader

    only_extra = dataclasses.replace(merged, train=added)
    data = tiny_config(root).data
    data.update(dict(manip_prob=1.0, d4="none", patches_per_image=4, mix_files=1, class_balance="none"))
    loader = train_loader.make_train_loader(only_extra, data, batch_size=8, seed=0)
    batch = next(loader)
    manip = batch["label"] == 2
    assert manip.sum() == 4
    assert (batch["is_manipulated"][manip] == 1).all() and (batch["manipulation"][manip] == -1).all()
    assert (batch["manipulation"][~manip] > 0).all(), "the unaltered extra file is still augmented"
    frame = np.asarray(Image.open(extra / "train" / "sony_nex_7" / "img_0000002_manip.tif"))
    for patch in batch["image"][manip]:  # a plain crop of the file
        assert any((frame[y : y + 32, x : x + 32] == patch).all() for y in range(0, 33, 2) for x in range(0, 33, 2))


def test_add_extra_train_names_bad_sources(root, tmp_path):
    index = sources.scan_root(root)
    with pytest.raises(FileNotFoundError, match="no train/ folder"):
        sources.add_extra_train(index, tmp_path)
    save(texture(64, 64, 1), tmp_path / "train" / "Nokia-3310" / "a.tif")
    with pytest.raises(ValueError, match="Nokia-3310"):
        sources.add_extra_train(index, tmp_path)
    with pytest.raises(ValueError, match="validation files"):  # the root itself: its val files would leak
        sources.add_extra_train(index, root)


def test_open_dataset_reads_data_extra(root, tmp_path):
    save(texture(64, 64, 1), tmp_path / "train" / "HTC-1-M7" / "img_0000001_unalt.tif")
    config = tiny_config(root)
    base, _, _ = assembly.open_dataset(config.data, seed=0)
    config.data.extra = str(tmp_path)
    index, _, _ = assembly.open_dataset(config.data, seed=0)
    assert len(index.train) == len(base.train) + 1 and index.val == base.val
    config.data.source, config.data.tfds_dir = "tfds", str(tmp_path)
    with pytest.raises(ValueError, match="data.extra"):
        assembly.open_dataset(config.data, seed=0)


def test_select_keeps_confident_assignments():
    probs = np.array([[0.97, 0.03], [0.4, 0.6], [0.02, 0.98], [np.nan, np.nan]])
    fnames = ["img_a_unalt.tif", "img_b_unalt.tif", "img_c_manip.tif", "img_d_unalt.tif"]
    assigned = ["A", "A", "B", "A"]  # balancing may move a file off its argmax
    chosen = pseudolabel.select(fnames, ["A", "B"], probs, assigned, 0.95)
    assert [(f, c) for f, c, _ in chosen] == [("img_a_unalt.tif", "A"), ("img_c_manip.tif", "B")]
    assert chosen[0][2] == pytest.approx(0.97)
    unaltered = pseudolabel.select(fnames, ["A", "B"], probs, assigned, 0.95, include_manipulated=False)
    assert [f for f, _, _ in unaltered] == ["img_a_unalt.tif"]


@pytest.mark.slow
def test_a_round_end_to_end(root, tmp_path):
    first = tmp_path / "round0"
    trainer.train_and_evaluate(tiny_config(root), str(first))
    out = tmp_path / "pseudo"
    result = pseudolabel.pseudolabel([str(first)], data_root=str(root), out=str(out), threshold=0.0, max_tiles=4)
    tests = sorted(os.listdir(root / "test"))
    assert result["pseudo_labels"] == len(tests) and sum(result["per_class"].values()) == len(tests)
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == pseudolabel.MANIFEST_COLUMNS and sorted(r["fname"] for r in rows) == tests
    submission = {r["fname"]: r["camera"] for r in csv.DictReader(open(out / "predictions.csv"))}
    for r in rows:
        copied = out / "train" / r["camera"] / r["fname"]
        assert copied.read_bytes() == (root / "test" / r["fname"]).read_bytes()  # original bytes
        assert r["camera"] == submission[r["fname"]]
        assert r["is_manipulated"] == str(int("_manip" in r["fname"]))
    with pytest.raises(FileExistsError, match="not empty"):
        pseudolabel.pseudolabel([str(first)], data_root=str(root), out=str(out), threshold=0.0, max_tiles=4)

    second = tmp_path / "round1"
    val = trainer.train_and_evaluate(tiny_config(root, **{"data.extra": str(out)}), str(second))
    assert np.isfinite(val["val/weighted_accuracy"])
    config = ml_collections.ConfigDict(__import__("json").load(open(second / "config.json")))
    assert config.data.extra == str(out)
