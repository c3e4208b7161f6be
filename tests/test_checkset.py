"""The independent check set (benchmarks/checkset.py) and the two reference baselines
(benchmarks/baseline_cnn.py, baseline_features.py), on a tiny set: layout, labels,
determinism, independence of draws, and both baselines end to end."""

import csv
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
MANIPULATIONS = {"none", "jpeg70", "jpeg90", "resize0.5", "resize0.8", "resize1.5", "resize2.0", "gamma0.8", "gamma1.2"}


def script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, str(BENCH / name), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The tiny set, made once per session: under xdist the first worker makes it and the
    others wait on the lock (xdist_group cannot be relied on: with pytest 9.2 and xdist 3.8 it
    does not keep a group on one worker)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by this session's workers
    out = base / "checkset-tiny"
    with open(base / "checkset-tiny.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "cameras.json").exists():
            shutil.rmtree(out, ignore_errors=True)
            script(
                "checkset.py",
                "--out",
                str(out),
                "--draw",
                "0",
                "--cameras",
                "2",
                "--train-per-camera",
                "3",
                "--test-per-camera",
                "4",
                "--workers",
                "2",
            )
    return out


@pytest.fixture(scope="module")
def checkset():
    sys.path.insert(0, str(BENCH))
    try:
        import checkset
    finally:
        sys.path.remove(str(BENCH))
    return checkset


def test_layout_and_labels(tiny):
    classes = sorted(p.name for p in (tiny / "train").iterdir())
    assert classes == ["HTC-1-M7", "iPhone-4s"]
    for c in classes:
        frames = sorted((tiny / "train" / c).glob("*.jpg"))
        assert len(frames) == 3
        for f in frames:
            assert Image.open(f).format == "JPEG" and Image.open(f).size in ((1024, 768), (768, 1024))
    with open(tiny / "test_labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and set(rows[0]) == {"fname", "camera", "manipulation"}
    assert sorted(p.name for p in (tiny / "test").iterdir()) == sorted(r["fname"] for r in rows)
    for r in rows:
        assert r["camera"] in classes and r["manipulation"] in MANIPULATIONS
        assert r["fname"].endswith("_unalt.tif") == (r["manipulation"] == "none")
        assert len(r["fname"].split("_")[1]) == 7
        img = Image.open(tiny / "test" / r["fname"])
        assert img.format == "TIFF" and img.size == (512, 512) and img.mode == "RGB"
    assert sum(r["manipulation"] != "none" for r in rows) == 4
    info = json.loads((tiny / "cameras.json").read_text())
    assert info["draw"] == 0 and set(info["cameras"]) == set(classes)
    cam = info["cameras"]["HTC-1-M7"]
    assert cam["bayer"] in ("RGGB", "BGGR", "GRBG", "GBRG") and 85 <= cam["jpeg_quality"] <= 98
    assert set(cam["devices"]) == {"1", "2"}


def test_no_camjax_import():
    for name in ("checkset.py", "baseline_cnn.py", "baseline_features.py"):
        text = (BENCH / name).read_text()
        assert "import camjax" not in text and "from camjax" not in text, name


def test_deterministic_for_a_draw_and_independent_between_draws(tiny, checkset, tmp_path):
    params = [checkset.draw_camera(0, c) for c in range(2)]
    jobs = checkset.plan(0, 2, 3, 4, params)
    train, test = jobs[1], next(j for j in jobs if j["split"] == "test" and j["manipulation"] != "none")
    (tmp_path / "train" / "HTC-1-M7").mkdir(parents=True)
    (tmp_path / "test").mkdir()
    checkset.render(train, str(tmp_path))
    checkset.render(test, str(tmp_path))
    for job in (train, test):  # rendered in this process = rendered by the pool
        assert (tmp_path / job["path"]).read_bytes() == (tiny / job["path"]).read_bytes()
    # Another draw: other cameras, other scenes, other names.
    assert checkset.draw_camera(1, 0) != checkset.draw_camera(0, 0)
    other = checkset.plan(1, 2, 3, 4, [checkset.draw_camera(1, c) for c in range(2)])
    assert {j["path"] for j in other if j["split"] == "test"}.isdisjoint(
        {j["path"] for j in jobs if j["split"] == "test"}
    )
    moved = dict(other[1], path="train/HTC-1-M7/draw1.jpg")
    checkset.render(moved, str(tmp_path))
    a = np.asarray(Image.open(tmp_path / moved["path"]).convert("RGB"), np.float32)
    b = np.asarray(Image.open(tiny / train["path"]).convert("RGB"), np.float32)
    assert a.shape != b.shape or np.abs(a - b).mean() > 5


@pytest.mark.parametrize(
    "name,args",
    [("baseline_cnn.py", ("--steps", "3")), ("baseline_features.py", ("--max-iter", "3", "--patches-per-frame", "4"))],
)
def test_baseline_end_to_end(tiny, name, args):
    lines = [json.loads(line) for line in script(name, "--root", str(tiny), *args).stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    rec = lines[0]
    assert rec["benchmark"] == name[:-3] and rec["test_files"] == 8 and rec["classes"] == 2
    for key in ("weighted_accuracy", "accuracy_unalt", "accuracy_manip"):
        assert 0.0 <= rec[key] <= 1.0
    assert rec["weighted_accuracy"] == pytest.approx(
        0.7 * rec["accuracy_unalt"] + 0.3 * rec["accuracy_manip"], abs=1e-3
    )
    assert rec["steps"] == 3 and rec["device"] and rec["machine"]["cores"] >= 1
