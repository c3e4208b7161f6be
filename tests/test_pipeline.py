"""The Grain training pipeline, validation crops and test tiling."""

import numpy as np
import pytest
from camjax_testdata import coordinate_image, locate, make_challenge_tree, save, texture

from camjax import tta
from camjax.cameras import MANIPULATIONS
from camjax.data import eval_batches, grid, manipulations, sources, train_loader
from camjax.data.decode import decode_image
from camjax.defaults import get_config


def data_config(**overrides):
    c = get_config().data
    c.update(dict(patch=64, patches_per_image=4, workers=0, prefetch=2, class_balance="none"))
    c.update(overrides)
    return c


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same(batches_a, batches_b):
    for a, b in zip(batches_a, batches_b, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory):
    return make_challenge_tree(tmp_path_factory.mktemp("jpeg"), per_class=3)


@pytest.fixture(scope="module")
def coord_index(tmp_path_factory):
    """PNG sources whose pixels encode their coordinates."""
    root = tmp_path_factory.mktemp("coord")
    for name in ("HTC-1-M7", "iPhone-4s"):
        for i, (h, w) in enumerate(((300, 400), (330, 290))):
            save(coordinate_image(h, w), root / "train" / name / f"{i}.png")
    return sources.scan_root(root, val_fraction=0)


def test_host_d4_matches_tta_transform():
    x = texture(6, 6, 0)
    for k in range(8):
        np.testing.assert_array_equal(grid.d4_host(x, k), np.asarray(tta.transform(x[None], k))[0])


def test_train_batches_static_and_consistent(jpeg_root):
    index = sources.scan_root(jpeg_root, val_fraction=0)
    it = train_loader.make_train_loader(index, data_config(), batch_size=6, seed=0)
    for batch in take(it, 5):
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
            "image": ((6, 64, 64, 3), np.uint8),
            "label": ((6,), np.int32),
            "is_manipulated": ((6,), np.float32),
            "manipulation": ((6,), np.int32),
            "d4": ((6,), np.int32),
            "skipped": ((6,), np.int32),
        }
        np.testing.assert_array_equal(batch["is_manipulated"], (batch["manipulation"] != 0).astype(np.float32))
        assert set(batch["label"]) <= {0, 1} and set(batch["manipulation"]) <= set(range(9))
        assert set(batch["d4"]) <= set(range(8)) and not batch["skipped"].any()


@pytest.mark.parametrize("step, d4", [(0, "d4"), (16, "flips")])
def test_png_crops_on_the_cfa_grid_and_d4_as_recorded(coord_index, step, d4):
    cfg = data_config(manip_prob=0.0, crop_step=step, d4=d4)
    it = train_loader.make_train_loader(coord_index, cfg, batch_size=16, seed=1)
    spacing = step or grid.CFA_GRID
    seen_d4 = set()
    for batch in take(it, 4):
        for img, k in zip(batch["image"], batch["d4"]):
            seen_d4.add(int(k))
            upright = grid.d4_host(img, tta.inverse(int(k)))
            y, x = locate(upright)
            assert y % spacing == 0 and x % spacing == 0
            np.testing.assert_array_equal(upright, coordinate_image(y + 64, x + 64)[y:, x:])
    assert seen_d4 == set(tta.views(d4))


def test_jpeg_crops_on_the_dct_grid(jpeg_root):
    index = sources.scan_root(jpeg_root, val_fraction=0)
    frames = [decode_image(r.path) for r in index.train]
    it = train_loader.make_train_loader(index, data_config(manip_prob=0.0, d4="none"), batch_size=8, seed=2)
    for img in np.concatenate([b["image"] for b in take(it, 3)]):
        hits = []
        for frame in frames:
            for y, x in np.argwhere(np.all(frame[:-63, :-63] == img[0, 0], axis=-1)):
                if np.array_equal(frame[y : y + 64, x : x + 64], img):
                    hits.append((y, x))
        assert hits and all(y % 8 == 0 and x % 8 == 0 for y, x in hits)


def test_manipulated_patches_match_the_reference():
    frame = texture(200, 170, 3)
    rng = np.random.default_rng(0)
    out = train_loader.cut_train_patches(frame, rng, patch=64, count=60, step=2, manip_prob=1.0, views=tta.views("d4"))
    assert out["image"].shape == (60, 64, 64, 3)
    # resize0.5 needs a 128 px source: fits; every manipulation is drawn, none is 'none'
    assert set(out["manipulation"]) == set(range(1, 9))
    for img, m, k, (y, x) in zip(out["image"], out["manipulation"], out["d4"], out["origin"]):
        size = manipulations.source_size(64, MANIPULATIONS[m])
        assert y % 2 == 0 and x % 2 == 0 and y + size <= 200 and x + size <= 170
        expected = manipulations.manipulate_patch(frame[y : y + size, x : x + size], 64, MANIPULATIONS[m])
        np.testing.assert_array_equal(img, grid.d4_host(expected, int(k)))


def test_shared_photo_augmentation_recompresses_only_unaltered_patches():
    frame = texture(200, 170, 3)
    kw = dict(patch=64, count=60, step=8, manip_prob=0.5, views=tta.views("d4"))
    plain = train_loader.cut_train_patches(frame, np.random.default_rng(0), **kw)
    assert "shared" not in plain  # and, unasked, the draws are those of a run without the option
    out = train_loader.cut_train_patches(frame, np.random.default_rng(0), shared_prob=1.0, **kw)
    low, high = manipulations.SHARED_QUALITIES
    unaltered = out["manipulation"] == 0
    assert unaltered.any() and (~unaltered).any()
    assert np.all((out["shared"][unaltered] >= low) & (out["shared"][unaltered] <= high))
    assert not out["shared"][~unaltered].any()
    assert len(set(out["shared"][unaltered])) > 3  # the quality is drawn per patch
    for img, m, k, q, (y, x) in zip(out["image"], out["manipulation"], out["d4"], out["shared"], out["origin"]):
        size = manipulations.source_size(64, MANIPULATIONS[m])
        source = frame[y : y + size, x : x + size]
        if m:
            expected = manipulations.manipulate_patch(source, 64, MANIPULATIONS[m])
        else:  # the label stays 'none': a photo off the web carries no flag
            expected = manipulations.jpeg_compress(np.ascontiguousarray(source), int(q))
            assert not np.array_equal(expected, source)
        np.testing.assert_array_equal(img, grid.d4_host(expected, int(k)))


def test_shared_photo_augmentation_is_refused_on_the_device_path(jpeg_root):
    index = sources.scan_root(jpeg_root, val_fraction=0)
    with pytest.raises(ValueError, match="data.shared_prob needs data.manipulate_on='host'"):
        train_loader.make_train_loader(
            index, data_config(shared_prob=0.3, manipulate_on="device"), batch_size=8, seed=0
        )


def test_manipulations_that_do_not_fit_are_not_drawn():
    out = train_loader.cut_train_patches(
        texture(100, 120, 4), np.random.default_rng(0), patch=64, count=80, step=2, manip_prob=1.0, views=(0,)
    )
    assert set(out["manipulation"]) == {1, 2, 4, 5, 6, 7, 8}  # resize0.5 needs 128 px


def test_d4_exempt_classes_are_never_rotated(jpeg_root):
    index = sources.scan_root(jpeg_root, val_fraction=0)
    cfg = data_config(d4="d4", d4_exempt_classes=("iphone_4s",))
    batches = take(train_loader.make_train_loader(index, cfg, batch_size=16, seed=0), 3)
    labels = np.concatenate([b["label"] for b in batches])
    d4 = np.concatenate([b["d4"] for b in batches])
    assert not d4[labels == 1].any() and d4[labels == 0].any()


def test_class_balanced_sampling(tmp_path):
    for i in range(8):
        save(texture(80, 80, i), tmp_path / "train" / "HTC-1-M7" / f"{i}.png")
    for i in range(2):
        save(texture(80, 80, 10 + i), tmp_path / "train" / "iPhone-6" / f"{i}.png")
    index = sources.scan_root(tmp_path, val_fraction=0)

    def labels(balance):
        cfg = data_config(patches_per_image=1, class_balance=balance, manip_prob=0.0)
        it = train_loader.make_train_loader(index, cfg, batch_size=10, seed=0)
        return np.bincount(np.concatenate([b["label"] for b in take(it, 10)]), minlength=2)

    assert labels("sampling").tolist() == [50, 50]  # 10 epochs of 10 slots, 5 per class each
    assert labels("weights").tolist() == [80, 20]  # every file once per epoch


def test_deterministic_given_seed_and_epochs_reshuffled(jpeg_root):
    index = sources.scan_root(jpeg_root, val_fraction=0)
    cfg = data_config()
    a = take(train_loader.make_train_loader(index, cfg, batch_size=8, seed=5), 3)
    b = take(train_loader.make_train_loader(index, cfg, batch_size=8, seed=5), 3)
    c = take(train_loader.make_train_loader(index, cfg, batch_size=8, seed=6), 3)
    assert_same(a, b)
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    plan = train_loader._TrainPlan(index.train, cfg, seed=5, shard_index=0, views=(0,), group=1)
    orders = [plan.order(e).tolist() for e in range(4)]
    assert all(sorted(o) == list(range(6)) for o in orders) and len({tuple(o) for o in orders}) > 1


def test_state_restore_continues_exactly(jpeg_root):
    index = sources.scan_root(jpeg_root, val_fraction=0)
    cfg = data_config()
    it = train_loader.make_train_loader(index, cfg, batch_size=8, seed=0)
    take(it, 3)
    state = it.get_state()
    expected = take(it, 4)
    restored = train_loader.make_train_loader(index, cfg, batch_size=8, seed=0)
    restored.set_state(state)
    assert_same(take(restored, 4), expected)


def test_two_workers_and_restore(jpeg_root):
    index = sources.scan_root(jpeg_root, val_fraction=0)
    cfg = data_config(workers=2)
    it = train_loader.make_train_loader(index, cfg, batch_size=8, seed=0)
    first = take(it, 2)
    state = it.get_state()
    expected = take(it, 3)
    it.close()
    restored = train_loader.make_train_loader(index, cfg, batch_size=8, seed=0)
    restored.set_state(state)
    assert_same(take(restored, 3), expected)
    restored.close()
    assert first[0]["image"].shape == (8, 64, 64, 3)


def test_shards_disjoint_and_covering(tmp_path):
    for c, name in enumerate(("HTC-1-M7", "iPhone-6")):
        for i in range(5):
            save(np.full((70, 70, 3), 20 * (5 * c + i), np.uint8), tmp_path / "train" / name / f"{i}.png")
    index = sources.scan_root(tmp_path, val_fraction=0)
    cfg = data_config(patches_per_image=1, manip_prob=0.0, mix_files=1)  # one file per group: whole epochs
    seen = []
    for shard in range(3):
        n = len(train_loader.shard_records(index.train, shard, 3))
        it = train_loader.make_train_loader(index, cfg, batch_size=1, seed=0, shard_index=shard, shard_count=3)
        ids = [int(b["image"][0, 0, 0, 0]) // 20 for b in take(it, 2 * n)]  # two whole epochs
        assert len(set(ids)) == n
        assert all(ids.count(i) == 2 for i in set(ids))
        seen.append(set(ids))
    assert set.union(*seen) == set(range(10)) and sum(map(len, seen)) == 10


def test_eval_batches(jpeg_root):
    index = sources.scan_root(jpeg_root, val_fraction=0)
    records = index.train[:3]
    cfg = data_config(val_crops=3)
    batches = list(eval_batches.make_eval_batches(records, cfg, batch_size=20))
    rows = 3 * 3 * 9
    assert len(batches) == -(-rows // 20)
    for b in batches:
        assert b["image"].shape == (20, 64, 64, 3) and b["mask"].dtype == np.float32
    cat = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    assert cat["mask"].sum() == rows and not cat["mask"][rows:].any() and (cat["record_index"][rows:] == -1).all()
    np.testing.assert_array_equal(cat["manipulation"][:rows], np.tile(np.arange(9), 9))
    np.testing.assert_array_equal(cat["is_manipulated"], (cat["manipulation"] != 0) * cat["mask"])
    np.testing.assert_array_equal(cat["record_index"][:rows], np.repeat(np.arange(3), 27))
    np.testing.assert_array_equal(cat["label"][:rows], [records[i].label for i in cat["record_index"][:rows]])
    frame = decode_image(records[0].path)
    h, w = frame.shape[:2]
    origins = grid.eval_origins(h, w, 64, 8, 3)
    assert origins[0] == ((h - 64) // 2 // 8 * 8, (w - 64) // 2 // 8 * 8) and len(set(origins)) == 3
    for c, (y, x) in enumerate(origins):
        assert y % 8 == 0 and x % 8 == 0
        np.testing.assert_array_equal(cat["image"][9 * c], frame[y : y + 64, x : x + 64])
    y, x = origins[0]  # the centre crop: every source fits, centred on the patch
    for m in MANIPULATIONS[1:]:
        off = (manipulations.source_size(64, m) - 64) // 2
        src = frame[
            y - off : y - off + manipulations.source_size(64, m), x - off : x - off + manipulations.source_size(64, m)
        ]
        np.testing.assert_array_equal(cat["image"][m.id], manipulations.manipulate_patch(src, 64, m))
    again = list(eval_batches.make_eval_batches(records, cfg, batch_size=20))
    assert_same(again, batches)


def test_eval_mirrors_frames_smaller_than_a_source(tmp_path):
    save(texture(70, 90, 0), tmp_path / "a.png")
    rec = [sources.Record(str(tmp_path / "a.png"), 0, "HTC-1-M7")]
    batches = list(eval_batches.make_eval_batches(rec, data_config(val_crops=1), batch_size=9))
    assert len(batches) == 1 and batches[0]["mask"].all()


def test_test_batches_tiles_flags_and_streaming(tmp_path):
    big = texture(1030, 700, 1)
    save(big, tmp_path / "img_0000001_manip.png")
    save(texture(512, 512, 2), tmp_path / "img_0000002_unalt.tif")
    save(texture(512, 512, 3), tmp_path / "other.tif")
    paths = [str(tmp_path / n) for n in ("img_0000001_manip.png", "img_0000002_unalt.tif", "other.tif")]
    assert grid.tile_origins(1030, 700, 512) == [(0, 0), (0, 184), (256, 0), (256, 184), (512, 0), (512, 184)]
    batches = list(eval_batches.make_test_batches(paths, patch=512, batch_size=4))
    cat = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    assert len(batches) == 2 and cat["mask"].tolist() == [1] * 8
    assert cat["file_index"].tolist() == [0] * 6 + [1, 2]
    assert cat["is_manipulated"].tolist() == [1] * 6 + [0, 0]
    np.testing.assert_array_equal(cat["image"][3], big[256:768, 184:696])
    sub = eval_batches.make_test_batches(paths[:1], patch=512, batch_size=4, max_tiles=3)
    (b,) = list(sub)
    assert b["mask"].tolist() == [1, 1, 1, 0] and b["file_index"].tolist() == [0, 0, 0, -1]
    np.testing.assert_array_equal(b["image"][2], big[512:1024, 184:696])  # first, middle, last tile
    lazy = iter(eval_batches.make_test_batches([str(tmp_path / "missing.tif")], patch=64, batch_size=2))
    with pytest.raises(ValueError, match="missing.tif"):
        next(lazy)


def test_device_manipulation_reproduces_the_host_batches(jpeg_root):
    """data.manipulate_on='device': same draws, raw crops shipped; the step's apply_on_device
    gives the host's patches (resizes by 0.8 and 1.5 may differ by one grey level on ~1e-5 of
    values: OpenCV's IPP rounding, see test_device_ops)."""
    from camjax.data import device_ops

    index = sources.scan_root(jpeg_root, val_fraction=0)
    host = train_loader.make_train_loader(index, data_config(manip_prob=0.7), batch_size=8, seed=3)
    device = train_loader.make_train_loader(
        index, data_config(manip_prob=0.7, manipulate_on="device"), batch_size=8, seed=3
    )
    manipulated = 0
    for h, d in zip(take(host, 4), take(device, 4)):
        assert "image" not in d and d["raw"].shape == (8, 128, 128, 3) and d["raw"].dtype == np.uint8
        for k in ("label", "manipulation", "d4", "is_manipulated"):
            np.testing.assert_array_equal(h[k], d[k], err_msg=k)
        made = np.asarray(device_ops.apply_on_device(d["raw"], d["manipulation"], d["d4"], patch=64))
        diff = np.abs(made.astype(int) - h["image"].astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
        manipulated += int((h["manipulation"] > 0).sum())
    assert manipulated >= 8
    with pytest.raises(ValueError, match="manipulate_on"):
        train_loader.make_train_loader(index, data_config(manipulate_on="gpu"), batch_size=8, seed=3)
