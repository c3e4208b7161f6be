"""Test helpers: small datasets in the challenge layout (textured JPEGs, 512x512 .tif test
files), and the repository's config files by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def repo_config(spec: str):
    """`configs/<name>.py[:preset]` of this repository, as `--config` reads it, from any directory."""
    from camjax import defaults

    path, sep, preset = spec.partition(":")
    return defaults.load_config(f"{REPO / path}{sep}{preset}")


# The sizes of the end-to-end tests' tiny camnet runs (configs/camnet.py:quick below them), as
# flattened config overrides: in-process configs and `--config.` flags take the same ones.
# Calibration and evaluation read 4 tiles of each crop, not all 64-256.
TINY_RUN = {
    "data.workers": 0,
    "data.patch": 32,
    "data.patches_per_image": 4,
    "data.val_crops": 1,
    "model.kwargs.widths": (8, 16),
    "model.head.hidden": (16, 8),
    "batch_size": 8,
    "eval.max_tiles": 4,
}


def texture(height: int, width: int, seed: int) -> np.ndarray:
    """A uint8 RGB image with gradients, blobs and noise (JPEG-compressible, never flat)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 128 + 60 * np.sin(x / rng.uniform(7, 40) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(7, 40))
    img = base[..., None] + rng.normal(0, 12, (height, width, 3)) + rng.uniform(-40, 40, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def coordinate_image(height: int, width: int) -> np.ndarray:
    """R = row % 256, G = col % 256, B = (row // 256) * 16 + col // 256: every pixel names its place."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([y % 256, x % 256, (y // 256) * 16 + x // 256], axis=-1).astype(np.uint8)


def locate(patch: np.ndarray) -> tuple[int, int]:
    """The (row, col) of a coordinate_image patch's top-left pixel."""
    r, g, b = (int(v) for v in patch[0, 0])
    return (b // 16) * 256 + r, (b % 16) * 256 + g


def save(image: np.ndarray, path: Path, quality: int = 95) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(image).save(path, quality=quality)
    else:
        Image.fromarray(image).save(path)
    return path


def write_test_labels(root: Path, classes) -> Path:
    """ROOT/test_labels.csv for the test files of `make_challenge_tree`: the i-th file (sorted)
    is camera classes[i % len(classes)], its manipulation jpeg70 when its name says manip."""
    import csv
    import os

    path = Path(root) / "test_labels.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["fname", "camera", "manipulation"])
        for i, name in enumerate(sorted(os.listdir(Path(root) / "test"))):
            w.writerow([name, classes[i % len(classes)], "jpeg70" if "manip" in name else "none"])
    return path


def make_challenge_tree(
    root: Path,
    classes=("HTC-1-M7", "iPhone-4s"),
    per_class: int = 3,
    sizes=((300, 400), (480, 640), (700, 900)),
    test_per_class: int = 1,
    ext: str = ".jpg",
    seed: int = 0,
) -> Path:
    """ROOT/train/<class>/<class>_<i><ext> and ROOT/test/img_<hex>_{unalt,manip}.tif."""
    root = Path(root)
    k = 0
    for c, name in enumerate(classes):
        for i in range(per_class):
            h, w = sizes[(c + i) % len(sizes)]
            save(texture(h, w, seed * 1000 + k), root / "train" / name / f"{name}_{i}{ext}")
            k += 1
    for j in range(test_per_class * len(classes)):
        suffix = "manip" if j % 2 else "unalt"
        save(texture(512, 512, seed * 1000 + 500 + j), root / "test" / f"img_{j:07x}_{suffix}.tif")
    return root
