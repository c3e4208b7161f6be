"""Odd and broken image files: decoded like PIL does, or skipped and counted, or a named error."""

import threading

import cv2
import numpy as np
import pytest
from camjax_testdata import save, texture
from PIL import Image, ImageFile, ImageOps

from camjax.data import eval_batches, sources, train_loader
from camjax.data.decode import BadImageError, decode_image, is_jpeg, orient
from camjax.defaults import get_config

IMG = texture(96, 128, 0)


def jpeg(path, image=IMG, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=95, **kw)
    return path


def bad_files(d):
    """name -> path of files that cannot be used."""
    d.mkdir(parents=True, exist_ok=True)
    good = jpeg(d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("not an image\n")
    save(texture(40, 50, 1), d / "small.png")
    return {n: d / f"{n}.{'png' if n == 'small' else 'jpg'}" for n in ("truncated", "empty", "text", "small")}


def odd_files(d):
    """name -> (path, the RGB array PIL makes of it)."""
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    gray = IMG[..., 1]
    out["gray_jpeg"] = jpeg(d / "gray.jpg", gray)
    out["cmyk_jpeg"] = d / "cmyk.jpg"
    Image.fromarray(IMG).convert("CMYK").save(out["cmyk_jpeg"], quality=95)
    out["gray_png"] = save(gray, d / "gray.png")
    out["rgba_png"] = d / "rgba.png"
    Image.fromarray(np.dstack([IMG, np.arange(IMG.size // 3).reshape(96, 128) % 256]).astype(np.uint8)).save(
        out["rgba_png"]
    )
    out["palette_png"] = d / "palette.png"
    Image.fromarray(IMG).quantize(64).save(out["palette_png"])
    out["exif_jpeg"] = d / "exif.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(IMG).save(out["exif_jpeg"], quality=95, exif=exif)
    expected = {n: np.asarray(Image.open(p).convert("RGB")) for n, p in out.items()}
    wide = (np.random.default_rng(0).random((80, 90, 3)) * 65535).astype(np.uint16)
    out["rgb16_png"] = d / "rgb16.png"
    cv2.imwrite(str(out["rgb16_png"]), wide[..., ::-1])
    expected["rgb16_png"] = (wide >> 8).astype(np.uint8)
    out["gray16_png"] = d / "gray16.png"
    Image.fromarray(wide[..., 0]).save(out["gray16_png"])
    expected["gray16_png"] = np.repeat((wide[..., :1] >> 8).astype(np.uint8), 3, axis=-1)
    return {n: (out[n], expected[n]) for n in out}


def test_truncated_images_are_not_loaded_silently():
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


@pytest.mark.parametrize(
    "name, reason",
    [("truncated", "corrupt JPEG"), ("empty", "empty file"), ("text", "not an image"), ("small", "smaller than")],
)
def test_bad_files_raise_naming_the_file(tmp_path, name, reason):
    path = bad_files(tmp_path)[name]
    with pytest.raises(BadImageError, match=reason) as info:
        decode_image(path, min_size=64)
    assert str(path) in str(info.value) and info.value.path == str(path)
    assert isinstance(info.value, ValueError)


def test_stray_bytes_are_a_warning_not_an_error(tmp_path):
    good = jpeg(tmp_path / "good.jpg").read_bytes()
    stray = good[:-2] + b"\x00\x11" + good[-2:]  # libjpeg: "extraneous bytes before marker 0xd9"
    np.testing.assert_array_equal(decode_image(stray), np.asarray(Image.open(tmp_path / "good.jpg")))


def test_missing_file_names_it(tmp_path):
    with pytest.raises(BadImageError, match="nope.jpg"):
        decode_image(tmp_path / "nope.jpg")


def test_odd_files_decode_like_pil(tmp_path):
    for name, (path, expected) in odd_files(tmp_path).items():
        image = decode_image(path)
        assert image.dtype == np.uint8 and image.shape == expected.shape, name
        np.testing.assert_array_equal(image, expected, err_msg=name)
        assert image.shape[2] == 3
        np.testing.assert_array_equal(decode_image(path.read_bytes(), name="x"), expected, err_msg=name)


def test_rgba_drops_alpha_and_gray_repeats(tmp_path):
    files = odd_files(tmp_path)
    np.testing.assert_array_equal(decode_image(files["rgba_png"][0]), IMG)
    gray = decode_image(files["gray_png"][0])
    assert (gray == IMG[..., 1:2]).all()


def test_jpeg_matches_pil_and_magic_bytes(tmp_path):
    for sub in (0, 2):
        path = jpeg(tmp_path / f"s{sub}.jpg", subsampling=sub)
        np.testing.assert_array_equal(decode_image(path), np.asarray(Image.open(path).convert("RGB")))
        assert is_jpeg(path) and is_jpeg(path.read_bytes())
    assert not is_jpeg(save(IMG, tmp_path / "a.png"))


def test_exif_orientation_kept_unless_asked(tmp_path):
    path = odd_files(tmp_path)["exif_jpeg"][0]
    stored = decode_image(path)
    assert stored.shape == (96, 128, 3)  # sensor order: not rotated by default
    upright = decode_image(path, apply_exif_orientation=True)
    np.testing.assert_array_equal(upright, np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")))
    assert upright.shape == (128, 96, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pil_exif_transpose(orientation):
    im = Image.fromarray(IMG[:7, :5])
    exif = im.getexif()
    exif[0x0112] = orientation
    im.info["exif"] = exif.tobytes()
    np.testing.assert_array_equal(orient(IMG[:7, :5], orientation), np.asarray(ImageOps.exif_transpose(im)))


def data_config(**kw):
    c = get_config().data
    c.update(dict(patch=64, patches_per_image=1, workers=0, class_balance="none", manip_prob=0.3))
    c.update(kw)
    return c


def mixed_root(root):
    """Class 0: 2 good + 4 bad files; class 1: 2 good + 8 odd-but-usable files."""
    for i in range(2):
        jpeg(root / "train" / "HTC-1-M7" / f"good{i}.jpg", texture(96, 128, 10 + i))
        jpeg(root / "train" / "iPhone-6" / f"good{i}.jpg", texture(96, 128, 20 + i))
    bad = bad_files(root / "train" / "HTC-1-M7")
    (root / "train" / "HTC-1-M7" / "good.jpg").unlink()
    odd = odd_files(root / "train" / "iPhone-6")
    assert len(bad) == 4 and len(odd) == 8
    return sources.scan_root(root, val_fraction=0)


def test_train_pipeline_skips_and_counts_bad_files(tmp_path, caplog):
    index = mixed_root(tmp_path)
    n = len(index.train)
    it = train_loader.make_train_loader(index, data_config(), batch_size=1, seed=0)
    with caplog.at_level("WARNING"):
        batches = [next(it) for _ in range(2 * n)]  # two whole epochs, one patch per slot
    assert sum(int(b["skipped"].sum()) for b in batches) == 2 * 4
    for name in ("truncated.jpg", "empty.jpg", "text.jpg", "small.png"):
        assert sum(name in r.getMessage() for r in caplog.records) == 1  # warned once
    labels = np.array([int(b["label"][0]) for b in batches])
    # bad files are replaced within their class; the odd files are used
    assert (labels == 0).sum() == 2 * 6 and (labels == 1).sum() == 2 * 10


def test_all_bad_files_raise_instead_of_hanging(tmp_path):
    for c in ("HTC-1-M7", "iPhone-6"):
        bad_files(tmp_path / "train" / c)
        (tmp_path / "train" / c / "good.jpg").unlink()
    index = sources.scan_root(tmp_path, val_fraction=0)
    it = train_loader.make_train_loader(index, data_config(), batch_size=2, seed=0)
    with pytest.raises(Exception, match="can be decoded"):
        next(it)


def test_worker_with_only_bad_files_does_not_hang(tmp_path):
    index = mixed_root(tmp_path)
    index.train = [r for r in index.train if r.label == 0]  # 2 good, 4 bad: many groups all bad
    result = {}

    def consume():
        cfg = data_config(workers=2, prefetch=1, mix_files=1)  # 12 one-patch batches = two whole epochs
        it = train_loader.make_train_loader(index, cfg, batch_size=1, seed=0)
        result["batches"] = [next(it) for _ in range(12)]
        it.close()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the loader hung"
    assert sum(int(b["skipped"].sum()) for b in result["batches"]) == 2 * 4


def test_eval_raises_or_skips(tmp_path):
    bad = bad_files(tmp_path)
    good = jpeg(tmp_path / "good.jpg")
    for name, path in bad.items():
        records = [sources.Record(str(good), 0, "a"), sources.Record(str(path), 1, "b")]
        with pytest.raises(BadImageError) as info:
            list(eval_batches.make_eval_batches(records, data_config(val_crops=1), batch_size=9, skip_bad=False))
        assert str(path) in str(info.value), name
        lenient = eval_batches.make_eval_batches(records, data_config(val_crops=1), batch_size=9)
        out = list(lenient)
        assert len(out) == 1 and out[0]["mask"].sum() == 9
        assert [p for p, _ in lenient.skipped] == [str(path)]


def test_test_path_raises_skips_or_pads(tmp_path):
    bad = bad_files(tmp_path)
    good = str(save(texture(64, 64, 3), tmp_path / "img_1_unalt.tif"))
    for name in ("truncated", "empty", "text", "small"):
        with pytest.raises(BadImageError) as info:
            list(eval_batches.make_test_batches([good, str(bad[name])], patch=64, batch_size=2))
        assert str(bad[name]) in str(info.value)
    lenient = eval_batches.make_test_batches(
        [good, str(bad["truncated"]), str(bad["text"])], patch=64, batch_size=2, skip_bad=True
    )
    (batch,) = list(lenient)
    assert batch["file_index"].tolist() == [0, -1] and len(lenient.skipped) == 2
    padded = list(eval_batches.make_test_batches([str(bad["small"])], patch=64, batch_size=1, pad=True))
    small = decode_image(bad["small"])
    np.testing.assert_array_equal(padded[0]["image"][0, :40, :50], small)
    np.testing.assert_array_equal(padded[0]["image"][0, 40:, :50], small[::-1][: 64 - 40])


def test_a_class_whose_validation_files_are_unreadable_trains_to_the_end(tmp_path, caplog):
    """The set of the bug report: a broken file alone in a class's validation split, odd and
    broken files among the training files. Training, report, evaluate and pseudolabel all finish,
    and the class without a readable validation file is reported as such, not as a zero."""
    import json

    from camjax_testdata import make_challenge_tree
    from test_train_evaluate import tiny_config

    from camjax import evaluator, pseudolabel, report, trainer

    root = make_challenge_tree(tmp_path / "data", classes=("HTC-1-M7", "iPhone-4s"), per_class=4, test_per_class=2)
    bad_files(root / "train" / "HTC-1-M7")
    odd_files(root / "train" / "iPhone-4s")
    (root / "val" / "HTC-1-M7").mkdir(parents=True)
    (root / "val" / "HTC-1-M7" / "zz_empty.jpg").write_bytes(b"")
    jpeg(root / "val" / "iPhone-4s" / "good.jpg", texture(96, 128, 5))
    (root / "val" / "iPhone-4s" / "zz_text.jpg").write_text("not an image\n")
    (root / "test" / "img_broken_unalt.tif").write_bytes(b"II*\x00")
    workdir = tmp_path / "run"
    with caplog.at_level("WARNING"):
        trainer.train_and_evaluate(tiny_config(root), str(workdir))
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/accuracy" in r]
    assert [r["step"] for r in val] == [3, 6]  # both epochs validated, the run reached its last step
    for r in val:
        assert r["val/class/HTC-1-M7"] is None and r["val/class/iPhone-4s"] is not None
        assert r["val/skipped_files"] == 2
    messages = [r.getMessage() for r in caplog.records]
    assert sum("zz_empty.jpg" in m for m in messages) == 1  # named once, though validated twice
    assert sum("no readable validation file for class HTC-1-M7" in m for m in messages) == 1

    page = open(report.write_report(str(workdir), per_class=1)).read()
    assert "classes without a readable validation file" in page and "zz_empty.jpg" in page
    result = evaluator.evaluate(
        [str(workdir)], out=str(tmp_path / "sub.csv"), skip_bad=True, batch_size=8, tta_name="none"
    )
    assert result["skipped"] == ["img_broken_unalt.tif"]
    labelled = pseudolabel.pseudolabel(
        [str(workdir)],
        data_root=str(root),
        out=str(tmp_path / "pl"),
        threshold=0.0,
        skip_bad=True,
        batch_size=8,
        tta_name="none",
    )
    assert labelled["skipped"] == ["img_broken_unalt.tif"] and labelled["pseudo_labels"] == 4
