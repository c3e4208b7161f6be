"""camjax.curate: quality estimate (vs ImageMagick), camera aliases, every trust rule, bad input, the CLI."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from camjax_testdata import texture
from conftest import require_reference
from PIL import Image, ImageFile, JpegPresets

from camjax.cameras import CHALLENGE_CLASSES, NATIVE_RESOLUTIONS
from camjax.curate import (
    Rules,
    aliases,
    check_file,
    curate,
    estimate_quality,
    ijg_table,
    is_native,
    list_sources,
    read_header,
    summary_table,
)
from camjax.curate.quality import IJG_CHROMA, IJG_LUMA

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- test photos


def _segments(data: bytes):
    """(marker, start, end) of each marker segment up to and including the first SOS."""
    pos = 2
    while True:
        marker, end = data[pos + 1], pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        yield marker, pos, end
        if marker == 0xDA:
            return
        pos = end


def set_frame_size(data: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its SOF header claiming another size (the pixels stay as they are)."""
    for marker, pos, _ in _segments(data):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return data[: pos + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[pos + 9 :]
    raise AssertionError("no SOF marker")


def garble_scan(data: bytes, seed: int = 0) -> bytes:
    """Headers intact, entropy-coded data replaced by random bytes (no 0xFF), EOI kept."""
    scan = next(end for marker, _, end in _segments(data) if marker == 0xDA)
    noise = np.random.default_rng(seed).integers(0, 255, len(data) - scan - 2, dtype=np.uint8).tobytes()
    return data[:scan] + noise + b"\xff\xd9"


def photo(
    path: Path | None = None,
    *,
    make="SONY",
    model="NEX-7",
    software=None,
    processing=None,
    orientation=1,
    xmp=None,
    quality=95,
    pixels=(16, 24),
    seed=0,
    frame=(6000, 4000),
    exif=True,
    **save,
) -> bytes:
    """A small JPEG with real EXIF whose SOF claims `frame` (W, H): header-level photos of any size cost
    nothing to encode, and the curation never decodes pixels (test_pixels_are_never_decoded)."""
    info = Image.Exif()
    for tag, value in (
        (0x010F, make),
        (0x0110, model),
        (0x0131, software),
        (0x000B, processing),
        (0x0112, orientation),
    ):
        if value is not None:
            info[tag] = value
    buf = io.BytesIO()
    kwargs = {"exif": info} if exif else {}
    if xmp is not None:
        kwargs["xmp"] = xmp.encode()
    Image.fromarray(texture(*pixels, seed)).save(buf, "JPEG", quality=quality, **kwargs, **save)
    data = buf.getvalue() if frame is None else set_frame_size(buf.getvalue(), *frame)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return data


def read_manifest(out: Path) -> dict[str, dict]:
    with open(out / "manifest.csv", newline="") as f:
        return {Path(r["path"]).name: r for r in csv.DictReader(f)}


# ---------------------------------------------------------------- quality


def _tables(data: bytes) -> dict:
    with Image.open(io.BytesIO(data)) as im:
        return dict(im.quantization)


def test_ijg_tables_match_libjpeg_and_estimate_recovers_every_quality():
    for q in range(1, 101):
        colour = _tables(photo(quality=q, frame=None, pixels=(8, 8)))
        assert colour == {0: list(ijg_table(IJG_LUMA, q)), 1: list(ijg_table(IJG_CHROMA, q))}, q
        assert estimate_quality(colour) == q
        assert estimate_quality({0: colour[0]}) == q  # greyscale files carry only the luma table
    assert estimate_quality({}) is None


def test_estimate_quality_follows_imagemagick_on_odd_tables():
    # A third table counts in the sum (Cb/Cr written separately): ImageMagick says 97 here.
    assert estimate_quality({0: [2] * 64, 1: [3] * 64, 2: [4] * 64}) == 97
    # Tables weaker than quality 50 that match no IJG quality: undefined (identify prints 92).
    assert estimate_quality({0: [200] * 64, 1: [200] * 64}) is None
    # Above 50 the first quality reached is taken even when inexact.
    t = list(ijg_table(IJG_LUMA, 94))
    t[63] += 1
    assert estimate_quality({0: t, 1: list(ijg_table(IJG_CHROMA, 94))}) == 94


def _imagemagick() -> list[str] | None:
    for cmd in (["identify"], ["magick", "identify"]):
        if shutil.which(cmd[0]):
            version = subprocess.run([*cmd, "-version"], capture_output=True, text=True, check=False).stdout
            if "ImageMagick" in version:
                return cmd
    return None


def test_quality_equals_imagemagick_identify(tmp_path):
    require_reference(_imagemagick() is not None, "ImageMagick's identify (apt-get install imagemagick)")
    rng = np.random.default_rng(0)
    files: dict[str, tuple[str, Path]] = {}

    def add(family, name, **save):
        path = tmp_path / f"{family}-{name}.jpg"
        photo(path, frame=None, pixels=(16, 16), **save)
        files[path.name] = (family, path)

    for q in range(1, 101):
        add("ijg", f"{q}", quality=q)
        add("ijg444", f"{q}", quality=q, subsampling=0)
        path = tmp_path / f"ijggray-{q}.jpg"
        Image.fromarray(texture(16, 16, q)[..., 0]).save(path, quality=q)
        files[path.name] = ("ijggray", path)
    for name, preset in JpegPresets.presets.items():
        add("preset", name, qtables=preset["quantization"], subsampling=preset["subsampling"])
    for i in range(800):  # IJG tables at a random quality, each entry jittered; some with separate Cb/Cr tables
        q = int(rng.integers(20, 101))
        n = 3 if i % 4 == 0 else 2
        tables = [
            np.clip(np.array(ijg_table(base, q)) * rng.uniform(0.8, 1.25, 64), 1, 255).round().astype(int).tolist()
            for base in (IJG_LUMA, IJG_CHROMA, IJG_CHROMA)[:n]
        ]
        add("random", f"{i}", qtables=tables)
    out = subprocess.run(
        [*_imagemagick(), "-format", "%f %Q\n", *(str(p) for _, p in files.values())],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    theirs = dict(line.split() for line in out.splitlines())
    worst: dict[str, int] = {}
    for name, (family, path) in files.items():
        with Image.open(path) as im:
            ours = estimate_quality(im.quantization) or 92  # identify's default where undefined
        worst[family] = max(worst.get(family, 0), abs(ours - int(theirs[name])))
    assert max(worst.values()) == 0, worst  # equal everywhere: IJG tables at qualities 1-100, presets, 800 jittered


# ---------------------------------------------------------------- camera aliases


@pytest.mark.parametrize(
    "make,model,cls",
    [
        ("HTC", "HTC One", "HTC-1-M7"),
        ("HTC", "HTC6500LVW", "HTC-1-M7"),
        ("HTC", "HTC_PN071", "HTC-1-M7"),
        ("HTC", "HTC One 801e", "HTC-1-M7"),
        ("Apple", "iPhone 4S", "iPhone-4s"),
        ("Apple", "iPhone 6", "iPhone-6"),
        ("LGE", "Nexus 5X", "LG-Nexus-5x"),
        ("LGE", "LG-H790", "LG-Nexus-5x"),
        ("motorola", "XT1080", "Motorola-Droid-Maxx"),
        ("motorola", "Nexus 6", "Motorola-Nexus-6"),
        ("Motorola", "XT1095", "Motorola-X"),
        ("SAMSUNG", "SM-N9005", "Samsung-Galaxy-Note3"),
        ("samsung", "SAMSUNG-SM-N900A", "Samsung-Galaxy-Note3"),
        ("SAMSUNG", "SM-N900W8", "Samsung-Galaxy-Note3"),
        ("SAMSUNG", "GT-I9505", "Samsung-Galaxy-S4"),
        ("SAMSUNG", "SAMSUNG-SGH-I337", "Samsung-Galaxy-S4"),
        ("SAMSUNG", "SCH-I545", "Samsung-Galaxy-S4"),
        ("SAMSUNG", "SM-S975L", "Samsung-Galaxy-S4"),
        ("SONY", "NEX-7", "Sony-NEX-7"),
        ("SONY", " NEX-7 ", "Sony-NEX-7"),
    ],
)
def test_aliases_map_real_exif_to_class(make, model, cls):
    assert aliases.model_class(model) == cls
    assert aliases.make_matches(cls, make)


@pytest.mark.parametrize(
    "model",
    [
        "iPhone 6 Plus",
        "iPhone 4",
        "Nexus 6P",
        "Nexus 5",
        "HTC One_M8",
        "HTC One X",
        "SM-N750",
        "SM-N9100",
        "GT-I9195",
        "GT-I9295",
        "NEX-6",
        "NEX-7N",
        "XT1060",
        "",
    ],
)
def test_aliases_leave_look_alikes_out(model):
    assert aliases.model_class(model) is None


def test_aliases_cover_every_class():
    assert not aliases.make_matches("Sony-NEX-7", "Canon")
    assert aliases.make_matches("sony_nex_7", "SONY")  # any spelling canonical_class_name knows
    assert {aliases.search_text(c) for c in CHALLENGE_CLASSES} and aliases.search_text("iphone_6") == "iPhone 6"
    with pytest.raises(ValueError, match="unknown camera class"):
        aliases.search_text("Nokia-3310")


# ---------------------------------------------------------------- the rules, file by file

W, H = 6000, 4000  # Sony-NEX-7, native
CASES = {  # name -> (photo kwargs or raw bytes, Rules kwargs, rules failed)
    "good": ({}, {}, []),
    "good_portrait": ({"frame": (H, W), "orientation": 6}, {}, []),
    "good_q94": ({"quality": 94}, {}, []),
    "good_htc_one": ({"make": "HTC", "model": "HTC One", "frame": (2688, 1520)}, {}, []),
    "good_nexus6_alt_size": ({"make": "motorola", "model": "Nexus 6", "frame": (4130, 3088)}, {}, []),
    "good_camera_firmware": ({"software": "NEX-7 v1.03"}, {}, []),
    "q93": ({"quality": 93}, {}, ["quality"]),
    "q80_threshold_70": ({"quality": 80}, {"min_quality": 70}, []),
    "odd_tables": ({"qtables": [[200] * 64, [200] * 64]}, {}, ["quality"]),
    "resized": ({"frame": (3000, 2000)}, {}, ["size"]),
    "resized_unchecked": ({"frame": (3000, 2000)}, {"check_size": False}, []),
    "other_camera_size": ({"frame": (4160, 3120)}, {}, ["size"]),
    "photoshop": ({"software": "Adobe Photoshop CC 2015 (Windows)"}, {}, ["software"]),
    "gimp_processing": ({"processing": "GIMP 2.10"}, {}, ["software"]),
    "snapseed_unchecked": ({"software": "Snapseed 2.0"}, {"check_software": False}, []),
    "custom_editor": ({"software": "MyTool 1.0"}, {"editors": ("mytool",)}, ["software"]),
    "xmp_lightroom": (
        {"xmp": '<x:xmpmeta><rdf:Description xmp:CreatorTool="Adobe Photoshop Lightroom 6.0"/></x:xmpmeta>'},
        {},
        ["software"],
    ),
    "xmp_history_vsco": (
        {"xmp": "<x:xmpmeta><rdf:li><stEvt:softwareAgent>VSCO Cam</stEvt:softwareAgent></rdf:li></x:xmpmeta>"},
        {},
        ["software"],
    ),
    "xmp_camera_raw": (
        {"xmp": '<x:xmpmeta xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"/>'},
        {},
        ["software"],
    ),
    "unknown_model": ({"make": "Canon", "model": "Canon EOS 5D"}, {}, ["model"]),
    "iphone6_plus": ({"make": "Apple", "model": "iPhone 6 Plus", "frame": (3264, 2448)}, {}, ["model"]),
    "wrong_make": ({"make": "Canon"}, {}, ["model"]),
    "no_make": ({"make": None}, {}, ["model"]),
    "no_model": ({"model": None}, {}, ["exif"]),
    "no_exif": ({"exif": False}, {}, ["exif"]),
    "other_class_than_asked": ({}, {"camera": "htc_1_m7"}, ["camera"]),
    "asked_class": ({}, {"camera": "sony-nex-7"}, []),
    "orientation_9": ({"orientation": 9}, {}, ["orientation"]),
    "orientation_0": ({"orientation": 0}, {}, ["orientation"]),
    "edited_small_lowq": (
        {"software": "Instagram", "quality": 75, "frame": (1080, 1080)},
        {},
        ["quality", "size", "software"],
    ),
    "png": (b"png", {}, ["not_jpeg"]),
    "text": (b"text", {}, ["not_jpeg"]),
    "empty": (b"", {}, ["not_jpeg"]),
    "truncated_in_headers": (b"head", {}, ["truncated"]),
    "truncated_in_scan": (b"scan", {}, ["truncated"]),
    "truncated_in_scan_unchecked": (b"scan", {"check_eoi": False}, []),
    "garbage_after_soi": (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(64), {}, ["not_jpeg"]),
    "corrupt_exif": (b"badexif", {}, ["exif"]),
    "missing": (None, {}, ["unreadable"]),
}


def _write_case(folder: Path, name: str, spec) -> Path:
    path = folder / f"{name}.jpg"
    if spec is None:
        path.symlink_to(folder / "no-such-file.jpg")
    elif isinstance(spec, dict):
        photo(path, **spec)
    elif spec == b"png":
        Image.fromarray(texture(16, 16, 0)).save(path, "PNG")
    elif spec == b"text":
        path.write_text("not a photo\n")
    elif spec == b"head":
        path.write_bytes(photo()[:300])
    elif spec == b"badexif":  # an EXIF block whose first IFD claims 65535 entries past the end
        data = photo(exif=False)
        app1 = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff" + bytes(20)
        path.write_bytes(data[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + data[2:])
    elif spec == b"scan":
        data = photo(pixels=(64, 64))
        path.write_bytes(data[: len(data) - 200])
    else:
        path.write_bytes(spec)
    return path


@pytest.fixture(scope="module")
def case_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cases")
    return {name: _write_case(folder, name, spec) for name, (spec, _, _) in CASES.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_rules(case_files, name):
    _, rules, expected = CASES[name]
    verdict = check_file(case_files[name], Rules(**rules))
    assert verdict.rules_failed == expected, verdict.reasons
    assert verdict.accepted == (not expected)


def test_verdict_reports_header_facts(case_files):
    v = check_file(case_files["photoshop"], Rules())
    assert (v.camera, v.make, v.model, v.width, v.height, v.quality, v.orientation) == (
        "Sony-NEX-7",
        "SONY",
        "NEX-7",
        W,
        H,
        95,
        "1",
    )
    assert v.software == "Adobe Photoshop CC 2015 (Windows)" and "photoshop" in v.reasons[0].lower()
    reason = check_file(case_files["resized"], Rules()).reasons[0]
    assert "3000x2000" in reason and "4000x6000" in reason  # the file's size and the native ones, W x H


def test_native_resolution_either_way():
    for cls, sizes in NATIVE_RESOLUTIONS.items():
        for h, w in sizes:
            assert is_native(cls, w, h) and is_native(cls, h, w)
    assert not is_native("Sony-NEX-7", 4000, 4000)
    assert not is_native("iPhone-6", 2322, 4128)  # a Samsung's size


def test_real_native_size_photo(tmp_path):
    """The size rule on a genuinely 2688x1520 encoded file, not only a patched header."""
    path = tmp_path / "htc.jpg"
    info = Image.Exif()
    info[0x010F], info[0x0110] = "HTC", "HTC One"
    Image.new("RGB", (2688, 1520), (90, 120, 150)).save(path, quality=96, exif=info)
    v = check_file(path, Rules())
    assert v.accepted and (v.width, v.height, v.quality) == (2688, 1520, 96)


def test_pixels_are_never_decoded(tmp_path, monkeypatch):
    path = tmp_path / "garbled.jpg"
    path.write_bytes(garble_scan(photo(pixels=(64, 96))))
    with pytest.raises(ValueError):  # a 6000x4000 frame over a few KiB of noise: libjpeg-turbo (strict) refuses it
        simplejpeg.decode_jpeg(path.read_bytes())
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("pixels decoded"))
    monkeypatch.setattr(Image, "_getdecoder", lambda *a: pytest.fail("decoder created"))
    verdict = check_file(path, Rules())
    assert verdict.accepted and (verdict.width, verdict.height) == (W, H), verdict.reasons


def test_header_reads_only_the_markers(tmp_path):
    path = tmp_path / "a.jpg"
    data = photo(path, software="NEX-7 v1.03", xmp='<x:xmpmeta xmp:CreatorTool="NEX-7 v1.03"/>')
    h = read_header(path, digest=True)
    assert (h.width, h.height, h.make, h.model, h.quality, h.orientation, h.has_eoi) == (
        W,
        H,
        "SONY",
        "NEX-7",
        95,
        1,
        True,
    )
    assert h.software == ("NEX-7 v1.03",)  # EXIF and XMP name the same firmware: listed once
    scan = next(end for marker, _, end in _segments(data) if marker == 0xDA)
    assert h.digest == hashlib.sha256(data[scan:]).hexdigest()


# ---------------------------------------------------------------- the whole run


def _tree(src: Path) -> None:
    photo(src / "a" / "good.jpg", seed=1)
    photo(src / "b" / "good.jpg", seed=2)  # same name, other photo: both kept under distinct names
    photo(src / "b" / "edited.jpg", seed=3, software="Adobe Photoshop Lightroom")
    photo(src / "b" / "htc.jpg", seed=4, make="HTC", model="HTC One", frame=(1520, 2688))
    data = photo(seed=5)
    (src / "c").mkdir()
    (src / "c" / "copy1.jpg").write_bytes(data)
    # The same image data under different metadata (a re-upload): EXIF blocks differ, the scan is equal.
    info_changed = photo(seed=5, orientation=1, software="NEX-7 v1.03")
    scan_a = next(end for m, _, end in _segments(data) if m == 0xDA)
    scan_b = next(end for m, _, end in _segments(info_changed) if m == 0xDA)
    assert data[scan_a:] == info_changed[scan_b:]
    (src / "c" / "copy2.jpg").write_bytes(info_changed)
    (src / "c" / "notes.txt").write_text("not a photo")


def test_curate_copies_accepted_and_writes_manifest(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    _tree(src)
    verdicts = curate(src, out, Rules(), dedupe=True, workers=2, progress=False)
    rows = read_manifest(out)
    assert len(verdicts) == 7 and len(rows) == 6  # two files are called good.jpg: keyed by name here
    by_path = {v.path: v for v in verdicts}
    assert [by_path[str(src / p)].accepted for p in ("a/good.jpg", "b/good.jpg", "b/htc.jpg", "c/copy1.jpg")] == [
        True
    ] * 4
    assert by_path[str(src / "c" / "copy2.jpg")].rules_failed == ["duplicate"]
    assert "copy1.jpg" in by_path[str(src / "c" / "copy2.jpg")].reasons[0]
    assert rows["edited.jpg"]["accepted"] == "0" and rows["edited.jpg"]["reason"].startswith("software:")
    assert rows["notes.txt"]["reason"].startswith("not_jpeg:")
    assert rows["htc.jpg"]["class"] == "HTC-1-M7" and rows["htc.jpg"]["quality"] == "95"
    sony = sorted(p.name for p in (out / "Sony-NEX-7").iterdir())
    assert len(sony) == 3 and "good.jpg" in sony and "copy1.jpg" in sony
    for v in verdicts:
        if v.accepted:
            assert Path(v.dest).read_bytes() == Path(v.path).read_bytes()  # byte for byte, never re-encoded
            assert not os.path.samefile(v.dest, v.path)
    assert sorted(p.name for p in (out / "HTC-1-M7").iterdir()) == ["htc.jpg"]
    table = summary_table(verdicts).splitlines()
    assert table[0].split() == ["class", "files", "accepted", "duplicate", "not_jpeg", "software"]
    assert table[-1].split() == ["total", "7", "4", "1", "1", "1"]

    # A rerun into the same folder finds its own copies and skips the output folder.
    again = curate([src, out], out, Rules(), dedupe=True, workers=1, progress=False)
    assert [(v.path, v.dest, v.reasons) for v in again] == [(v.path, v.dest, v.reasons) for v in verdicts]
    assert len(list((out / "Sony-NEX-7").iterdir())) == 3


def test_curate_links_and_filters_one_camera(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    _tree(src)
    verdicts = curate(src, out, Rules(camera="HTC-1-M7"), link=True, workers=1, progress=False)
    accepted = [v for v in verdicts if v.accepted]
    assert [Path(v.path).name for v in accepted] == ["htc.jpg"]
    assert os.path.samefile(accepted[0].dest, accepted[0].path)
    assert {tuple(v.rules_failed) for v in verdicts if not v.accepted} == {
        ("camera",),
        ("camera", "software"),
        ("not_jpeg",),
    }


def test_list_sources(tmp_path):
    _tree(tmp_path / "src")
    listing = tmp_path / "lists" / "files.txt"
    listing.parent.mkdir()
    listing.write_text("# candidates\n../src/a/good.jpg\n\n" + str(tmp_path / "src" / "b" / "htc.jpg") + "\n")
    single = tmp_path / "src" / "c" / "copy1.jpg"
    assert list_sources([listing, single]) == sorted(
        [str(listing.parent / "../src/a/good.jpg"), str(tmp_path / "src" / "b" / "htc.jpg"), str(single)]
    )
    assert len(list_sources(tmp_path / "src", exclude=tmp_path / "src" / "c")) == 4
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_sources(tmp_path / "nowhere")


def test_cli(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    _tree(src)
    cmd = [
        sys.executable,
        "-m",
        "camjax.curate",
        str(src),
        "--out",
        str(out),
        "--camera",
        "Sony-NEX-7",
        "--min_quality",
        "90",
        "--dedupe",
        "--workers",
        "1",
        "--noprogress",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[-1].startswith("accepted 3 of 7 files")
    assert lines[-2].split()[:3] == ["total", "7", "3"]
    assert len(read_manifest(out)) == 6
    bad = subprocess.run(
        [sys.executable, "-m", "camjax.curate", "--src", str(tmp_path / "nowhere"), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert bad.returncode == 1 and "nowhere: no such folder" in bad.stderr


def test_a_missing_reference_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run this comparison"):
        require_reference(False, "ImageMagick")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require_reference(False, "ImageMagick")
    require_reference(True, "ImageMagick")  # present: nothing happens
