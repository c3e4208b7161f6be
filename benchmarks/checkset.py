"""An independent check set: virtual cameras photographing scenes built from real photographs.

    python benchmarks/checkset.py --out DIR [--draw N] [--cameras 5] [--train-per-camera 40]
        [--test-per-camera 20] [--workers W]

Shares no code with camjax (it never imports it), so camjax can be judged on camera sets that
its own generator did not make. Layout as in the challenge:

    DIR/train/<class>/(<class>)<i>.jpg   device 1 of each camera, full 1024x768 frames
                                         (a quarter of them portrait, 768x1024)
    DIR/test/img_<7 hex>_{unalt,manip}.tif
                                         512x512 centre crops of device 2's frames, every
                                         other one manipulated (the eight challenge
                                         manipulations in turn)
    DIR/test_labels.csv                  fname,camera,manipulation
    DIR/cameras.json                     every drawn camera parameter

Scenes. Photographs bundled with PyPI packages (scikit-image's data folder, scikit-learn's
sample images, matplotlib's sample data) are first downscaled 2x with area averaging, which
averages away their own cameras' CFA, noise and JPEG traces, and converted to linear light.
A scene is a collage of them: a 2x2 or 3x3 mosaic of crops (zoomed 1-2.5x) as background and
6-15 occluding pieces (dead-leaves style), each a random crop at a random scale, flip, rotation
and brightness (the grey photographs are tinted), lit by a random illuminant colour and a smooth light falloff. The scene draw
never sees a camera parameter, so every camera photographs the same scene distribution.

Cameras. `--draw` seeds every camera parameter (draws 0 and 1 are independent camera sets).
Each camera: lens blur; sensor spectral response (a 3x3 crosstalk matrix with per-channel
sensitivities); Bayer layout; auto exposure; shot and read noise (full well, read noise,
per-frame ISO gain), a per-device PRNU pattern; ADC bit depth; auto white balance (between
the true illuminant and grey world, with random error); demosaicing (colour-demosaicing's
bilinear, Malvar 2004 or Menon 2007); colour correction matrix (the inverse crosstalk with
the maker's saturation); tone curve (sRGB or a gamma, with an S-curve); chroma and luma
denoising (strength following ISO); unsharp masking; JPEG (Pillow or OpenCV, quality
85-98, 4:2:0 / 4:2:2 / 4:4:4, or the maker's own quantisation tables). The two devices of a
camera share all of it except their PRNU pattern and noise scale.

Test frames are captured from a 1024x1024 sensor window of device 2 (the resize-0.5
manipulation needs a 1024-px source), rendered only as far as the patch needs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import importlib.util
import io
import json
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

VERSION = 1
CLASSES = (
    "HTC-1-M7",
    "iPhone-4s",
    "iPhone-6",
    "LG-Nexus-5x",
    "Motorola-Droid-Maxx",
    "Motorola-Nexus-6",
    "Motorola-X",
    "Samsung-Galaxy-Note3",
    "Samsung-Galaxy-S4",
    "Sony-NEX-7",
)
MANIPULATIONS = ("jpeg70", "jpeg90", "resize0.5", "resize0.8", "resize1.5", "resize2.0", "gamma0.8", "gamma1.2")
FRAME = (768, 1024)  # sensor rows x columns of train frames (landscape)
CANVAS = 1024  # scenes are composed on a square canvas; the test sensor window is all of it
PATCH = 512
PORTRAIT = 0.25  # chance that a frame is stored rotated (every camera alike)

# (package, file) of the photographs: all ship inside the wheels, nothing is downloaded; the
# grey ones (brick, grass, gravel, camera, coins) are tinted per piece.
SOURCES = (
    ("skimage.data", "astronaut.png"),
    ("skimage.data", "chelsea.png"),
    ("skimage.data", "coffee.png"),
    ("skimage.data", "motorcycle_left.png"),
    ("skimage.data", "rocket.jpg"),
    ("sklearn.datasets.images", "china.jpg"),
    ("sklearn.datasets.images", "flower.jpg"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ("skimage.data", "brick.png"),
    ("skimage.data", "grass.png"),
    ("skimage.data", "gravel.png"),
    ("skimage.data", "camera.png"),
    ("skimage.data", "coins.png"),
)
BAYER = ("RGGB", "BGGR", "GRBG", "GBRG")
DEMOSAIC = ("bilinear", "Malvar2004", "Menon2007")
JPEG_ENCODERS = ("pillow", "opencv", "pillow-tables")
SUBSAMPLING = ("4:2:0", "4:2:2", "4:4:4")
IJG_LUMA = np.array(
    [
        16,
        11,
        10,
        16,
        24,
        40,
        51,
        61,
        12,
        12,
        14,
        19,
        26,
        58,
        60,
        55,
        14,
        13,
        16,
        24,
        40,
        57,
        69,
        56,
        14,
        17,
        22,
        29,
        51,
        87,
        80,
        62,
        18,
        22,
        37,
        56,
        68,
        109,
        103,
        77,
        24,
        35,
        55,
        64,
        81,
        104,
        113,
        92,
        49,
        64,
        78,
        87,
        103,
        121,
        120,
        101,
        72,
        92,
        95,
        98,
        112,
        100,
        103,
        99,
    ],
    np.float64,
).reshape(8, 8)
IJG_CHROMA = np.full((8, 8), 99.0)
IJG_CHROMA[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]


# --- cameras -------------------------------------------------------------------------------


def _logu(rng, lo, hi):
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def draw_camera(draw: int, index: int) -> dict:
    """Every parameter of camera `index` in camera set `draw` (JSON-able)."""
    rng = np.random.default_rng([draw, 0xCA3E7A, index])
    crosstalk = rng.uniform(0.15, 0.4)
    mix = rng.uniform(0.2, 1.0, (3, 3)) * (1 - np.eye(3))
    mix /= mix.sum(1, keepdims=True)
    response = (1 - crosstalk) * np.eye(3) + crosstalk * mix  # rows sum to 1
    sensitivity = np.array([rng.uniform(0.45, 0.7), 1.0, rng.uniform(0.55, 0.85)])
    full_well = _logu(rng, 3500, 12000)  # electrons at base ISO
    encoder = str(rng.choice(JPEG_ENCODERS))
    quality = int(rng.integers(85, 99))
    cam = {
        "lens_blur_sigma": rng.uniform(0.35, 0.8),
        "sensor_response": response.tolist(),
        "channel_sensitivity": sensitivity.tolist(),
        "bayer": str(rng.choice(BAYER)),
        "adc_bits": int(rng.choice([10, 12])),
        "shot_noise": 1.0 / full_well,  # variance per unit signal (signal in 0..1)
        "read_noise": (rng.uniform(1.5, 4.5) / full_well) ** 2,  # variance
        "prnu_strength": rng.uniform(0.004, 0.015),
        "awb_grey_world": rng.uniform(0.0, 0.6),  # weight of grey world vs. the true illuminant
        "awb_error": rng.uniform(0.01, 0.04),  # log-gain error per frame (zero mean)
        "demosaic": str(rng.choice(DEMOSAIC)),
        "saturation": rng.uniform(0.95, 1.25),
        "tone": str(rng.choice(["srgb", "gamma"])),
        "gamma": rng.uniform(1.8, 2.4),
        "contrast": rng.uniform(0.0, 0.35),
        "chroma_denoise_sigma": float(rng.choice([0.0, rng.uniform(0.7, 2.0)])),
        "luma_denoise": float(rng.choice([0.0, rng.uniform(0.01, 0.03)])),  # bilateral range at ISO 1
        "sharpen_amount": float(rng.choice([0.0, rng.uniform(0.2, 1.0)], p=[0.25, 0.75])),
        "sharpen_sigma": rng.uniform(0.7, 1.5),
        "jpeg_encoder": encoder,
        "jpeg_quality": quality,
        "jpeg_subsampling": str(rng.choice(SUBSAMPLING, p=[0.6, 0.2, 0.2])),
        "jpeg_table_tilt": rng.uniform(-0.35, 0.35) if encoder == "pillow-tables" else 0.0,
        "devices": {str(d): {"noise_scale": _logu(rng, 0.8, 1.25)} for d in (1, 2)},
    }
    if cam["tone"] == "srgb":
        cam["gamma"] = 0.0
    return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in cam.items()}


def ccm(cam: dict) -> np.ndarray:
    """Colour correction: the inverse of the (row-normalised) crosstalk, then the maker's
    saturation around luminance; rows sum to 1, so white stays white."""
    inv = np.linalg.inv(np.array(cam["sensor_response"]))
    lum = np.array([0.2126, 0.7152, 0.0722])
    sat = cam["saturation"] * np.eye(3) + (1 - cam["saturation"]) * np.outer(np.ones(3), lum)
    return sat @ inv


def bayer_cell(bayer: str) -> list[tuple[int, int, int]]:
    """(row, column, channel 0 R / 1 G / 2 B) of the four filters of the 2x2 Bayer cell."""
    return [(i, j, "RGB".index(bayer[2 * i + j])) for i in (0, 1) for j in (0, 1)]


def prnu(draw: int, camera: int, device: int) -> np.ndarray:
    shape = FRAME if device == 1 else (CANVAS, CANVAS)
    return np.random.default_rng([draw, 0x9E1, camera, device]).standard_normal(shape, dtype=np.float32)


def jpeg_tables(quality: int, tilt: float) -> list[list[int]]:
    """IJG tables at `quality`, tilted towards high (tilt > 0) or low frequencies: a maker's own."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    ramp = 1 + tilt * (np.add.outer(np.arange(8), np.arange(8)) / 7 - 1)
    return [
        np.clip(np.round((t * scale + 50) / 100 * ramp), 1, 255).astype(int).ravel().tolist()
        for t in (IJG_LUMA, IJG_CHROMA)
    ]


def encode_jpeg(img: np.ndarray, cam: dict) -> bytes:
    q, sub = cam["jpeg_quality"], cam["jpeg_subsampling"]
    if cam["jpeg_encoder"] == "opencv":
        code = getattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR_" + sub.replace(":", "")[:3])
        ok, buf = cv2.imencode(
            ".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, code]
        )
        assert ok
        return buf.tobytes()
    buf = io.BytesIO()
    kw = {"subsampling": {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}[sub]}
    if cam["jpeg_encoder"] == "pillow-tables":
        kw["qtables"] = jpeg_tables(q, cam["jpeg_table_tilt"])
    else:
        kw["quality"] = q
    Image.fromarray(img).save(buf, format="JPEG", **kw)
    return buf.getvalue()


# --- scenes ---------------------------------------------------------------------------------

_SOURCES: list[tuple[np.ndarray, bool]] | None = None


def srgb_to_linear(x):
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def load_sources() -> list[tuple[np.ndarray, bool]]:
    """(linear float32 HxWx3, is_grey) of every bundled photograph, downscaled 2x (area)."""
    global _SOURCES
    if _SOURCES is None:
        out = []
        for module, name in SOURCES:
            top, _, sub = module.partition(".")  # find the file without importing the package
            folder = Path(importlib.util.find_spec(top).submodule_search_locations[0], *sub.split(".") if sub else ())
            img = np.asarray(Image.open(folder / name).convert("RGB"))
            h, w = img.shape[:2]
            small = cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
            grey = bool(np.ptp(img.astype(np.int16), axis=2).max() == 0)
            out.append((srgb_to_linear(small).astype(np.float32), grey))
        _SOURCES = out
    return _SOURCES


def _piece(rng, src: np.ndarray, grey: bool) -> np.ndarray:
    """A random crop of a source at a random scale, flip, rotation, brightness (and tint)."""
    img = np.rot90(src, int(rng.integers(4)))
    if rng.random() < 0.5:
        img = img[:, ::-1]
    scale = _logu(rng, 0.6, 1.7)
    h, w = img.shape[:2]
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    img = cv2.resize(np.ascontiguousarray(img), size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    if rng.random() < 0.3:  # a tilted piece: rotate, keep the inner square that has no corners
        h, w = img.shape[:2]
        angle = rng.uniform(-30, 30)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        img = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        side = int(min(h, w) / (abs(math.cos(math.radians(angle))) + abs(math.sin(math.radians(angle)))))
        img = img[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
    h, w = img.shape[:2]
    ph, pw = int(rng.integers(min(h, 96), h + 1)), int(rng.integers(min(w, 96), w + 1))
    y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    img = img[y : y + ph, x : x + pw] * _logu(rng, 0.4, 2.0)
    if grey:
        img = img * np.exp(rng.normal(0, 0.15, 3)).astype(np.float32)
    return np.maximum(img, 0)


def compose_scene(rng) -> np.ndarray:
    """A CANVAS x CANVAS linear-light scene (float32, reflectance x illumination)."""
    sources = load_sources()
    grid = int(rng.choice([2, 3], p=[0.3, 0.7]))  # the background: a mosaic of crops
    cuts = np.linspace(0, CANVAS, grid + 1).astype(int)
    canvas = np.empty((CANVAS, CANVAS, 3), np.float32)
    for gy in range(grid):
        for gx in range(grid):
            src, grey = sources[int(rng.integers(len(sources)))]
            src = np.rot90(src, int(rng.integers(4)))[:, :: int(rng.choice([1, -1]))]
            ch, cw = cuts[gy + 1] - cuts[gy], cuts[gx + 1] - cuts[gx]
            zoom = max(_logu(rng, 1.0, 2.5), ch / src.shape[0], cw / src.shape[1])
            sh, sw = round(ch / zoom), round(cw / zoom)
            y, x = int(rng.integers(0, src.shape[0] - sh + 1)), int(rng.integers(0, src.shape[1] - sw + 1))
            cell = cv2.resize(
                np.ascontiguousarray(src[y : y + sh, x : x + sw]), (cw, ch), interpolation=cv2.INTER_CUBIC
            )
            cell = cell * _logu(rng, 0.5, 1.5)
            if grey:
                cell = cell * np.exp(rng.normal(0, 0.15, 3)).astype(np.float32)
            canvas[cuts[gy] : cuts[gy + 1], cuts[gx] : cuts[gx + 1]] = np.maximum(cell, 0)
    for _ in range(int(rng.integers(6, 16))):  # occluding pieces
        src, grey = sources[int(rng.integers(len(sources)))]
        piece = _piece(rng, src, grey)
        ph, pw = piece.shape[:2]
        y, x = int(rng.integers(-ph // 3, CANVAS - 2 * ph // 3)), int(rng.integers(-pw // 3, CANVAS - 2 * pw // 3))
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + ph, CANVAS), min(x + pw, CANVAS)
        if y1 > y0 and x1 > x0:
            canvas[y0:y1, x0:x1] = piece[y0 - y : y1 - y, x0 - x : x1 - x]
    # Light: an illuminant colour (warm to cool) and a smooth falloff across the scene.
    t = rng.uniform(-1, 1)
    illuminant = np.array([math.exp(0.3 * t), 1.0, math.exp(-0.3 * t)], np.float32)
    yy, xx = np.mgrid[0:CANVAS:32, 0:CANVAS:32].astype(np.float32) / CANVAS - 0.5
    cy, cx = rng.uniform(-0.7, 0.7, 2)
    falloff = np.exp(-rng.uniform(0, 1.5) * ((yy - cy) ** 2 + (xx - cx) ** 2))
    falloff = cv2.resize(falloff, (CANVAS, CANVAS), interpolation=cv2.INTER_LINEAR)
    return (canvas * falloff[..., None] * illuminant).astype(np.float32), illuminant


# --- the camera pipeline ----------------------------------------------------------------------


def tone_curve(x: np.ndarray, cam: dict) -> np.ndarray:
    """Linear 0..1 -> encoded 0..1: sRGB or a gamma, then an S-curve of strength `contrast`."""
    if cam["tone"] == "srgb":
        y = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    else:
        y = np.power(x, 1 / cam["gamma"])
    c = cam["contrast"]
    return (1 - c) * y + c * y * y * (3 - 2 * y)


def tone(x: np.ndarray, cam: dict) -> np.ndarray:
    lut = tone_curve(np.linspace(0, 1, 65536), cam).astype(np.float32)  # a 16-bit lookup, like an ISP's
    return lut[(np.clip(x, 0, 1) * 65535 + 0.5).astype(np.int32)]


def demosaic(cfa: np.ndarray, bayer: str, method: str) -> np.ndarray:
    import colour_demosaicing as cd

    fn = {
        "bilinear": cd.demosaicing_CFA_Bayer_bilinear,
        "Malvar2004": cd.demosaicing_CFA_Bayer_Malvar2004,
        "Menon2007": cd.demosaicing_CFA_Bayer_Menon2007,
    }[method]
    return np.asarray(fn(cfa, bayer), np.float32)


def capture(cam: dict, device: int, pattern: np.ndarray, scene: np.ndarray, illuminant, window, rng, iso) -> np.ndarray:
    """Photograph `scene` (the sensor area, linear) and return the window (y, x, h, w) as uint8 RGB."""
    y0, x0, h, w = window
    m = 8  # margin for the lens blur and the demosaicing, cut off again at the end
    ya, xa = max(y0 - m, 0), max(x0 - m, 0)
    yb, xb = min(y0 + h + m, scene.shape[0]), min(x0 + w + m, scene.shape[1])
    ya, xa = ya - ya % 2, xa - xa % 2  # keep the CFA phase
    response = np.array(cam["channel_sensitivity"])[:, None] * np.array(cam["sensor_response"])
    region = cv2.GaussianBlur(scene[ya:yb, xa:xb], (0, 0), cam["lens_blur_sigma"])
    raw = cv2.transform(region, response.astype(np.float32))
    # Auto exposure on the whole sensor area (a coarse view), then the Bayer filter.
    coarse = cv2.resize(scene, (scene.shape[1] // 16, scene.shape[0] // 16), interpolation=cv2.INTER_AREA) @ response.T
    exposure = rng.uniform(0.10, 0.22) / max(float(coarse[..., 1].mean()), 1e-4)
    cfa = np.empty(raw.shape[:2], np.float32)
    for i, j, ch in bayer_cell(cam["bayer"]):
        cfa[i::2, j::2] = raw[i::2, j::2, ch] * exposure
    cfa *= 1 + cam["prnu_strength"] * pattern[ya:yb, xa:xb]
    var = (cam["shot_noise"] * iso * np.maximum(cfa, 0) + cam["read_noise"] * iso**2) * cam["devices"][str(device)][
        "noise_scale"
    ] ** 2
    cfa = cfa + np.sqrt(var) * rng.standard_normal(cfa.shape, dtype=np.float32)
    levels = 2 ** cam["adc_bits"] - 1
    cfa = np.round(np.clip(cfa, 0, 1) * levels) / levels
    # White balance: between the illuminant (as the sensor sees it) and grey world, with error.
    white = response @ illuminant
    grey = coarse.reshape(-1, 3).mean(0)
    lam = cam["awb_grey_world"]
    log_gain = (1 - lam) * np.log(white[1] / white) + lam * np.log(grey[1] / grey)
    gains = np.exp(log_gain + rng.normal(0, cam["awb_error"], 3) * [1, 0, 1])
    for i, j, ch in bayer_cell(cam["bayer"]):
        cfa[i::2, j::2] *= gains[ch]
    rgb = cv2.transform(demosaic(np.clip(cfa, 0, 1), cam["bayer"], cam["demosaic"]), ccm(cam).astype(np.float32))
    out = tone(rgb, cam).astype(np.float32)
    if cam["chroma_denoise_sigma"] or cam["luma_denoise"] or cam["sharpen_amount"]:
        ycc = cv2.cvtColor(out, cv2.COLOR_RGB2YCrCb)
        if cam["chroma_denoise_sigma"]:
            for c in (1, 2):
                ycc[..., c] = cv2.GaussianBlur(ycc[..., c], (0, 0), cam["chroma_denoise_sigma"])
        if cam["luma_denoise"]:
            ycc[..., 0] = cv2.bilateralFilter(ycc[..., 0], 5, cam["luma_denoise"] * math.sqrt(iso), 1.5)
        if cam["sharpen_amount"]:
            luma = ycc[..., 0]
            ycc[..., 0] = luma + cam["sharpen_amount"] * (luma - cv2.GaussianBlur(luma, (0, 0), cam["sharpen_sigma"]))
        out = cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)
    out = out[y0 - ya : y0 - ya + h, x0 - xa : x0 - xa + w]
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


# --- the challenge's test manipulations ---------------------------------------------------------


def source_size(name: str) -> int:
    return math.ceil(PATCH / float(name[6:])) if name.startswith("resize") else PATCH


def centre(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[(h - size) // 2 : (h - size) // 2 + size, (w - size) // 2 : (w - size) // 2 + size]


def manipulate(src: np.ndarray, name: str) -> np.ndarray:
    """The challenge manipulation of the source crop, centre-cropped to PATCH."""
    if name.startswith("jpeg"):
        buf = io.BytesIO()
        Image.fromarray(src).save(buf, format="JPEG", quality=int(name[4:]))
        out = np.asarray(Image.open(buf).convert("RGB"))
    elif name.startswith("resize"):
        s = float(name[6:])
        h, w = src.shape[:2]
        out = cv2.resize(src, (round(w * s), round(h * s)), interpolation=cv2.INTER_CUBIC)
    elif name.startswith("gamma"):
        table = np.clip(np.round(255 * (np.arange(256) / 255) ** float(name[5:])), 0, 255).astype(np.uint8)
        out = table[src]
    else:
        out = src
    return np.ascontiguousarray(centre(out, PATCH))


# --- frames and the dataset -----------------------------------------------------------------------


def render(job: dict, out_dir: str) -> dict | None:
    """Render, encode and write one frame; test frames return their label row."""
    draw, c, split, i = job["draw"], job["camera"], job["split"], job["index"]
    cam, device = job["params"], 1 if split == "train" else 2
    sid = 1 if split == "train" else 2
    scene_rng = np.random.default_rng([draw, 0x5CE7E, sid, c, i])  # knows no camera parameter
    shot_rng = np.random.default_rng([draw, 0x5407, sid, c, i])
    turns = int(shot_rng.choice([1, 3])) if shot_rng.random() < PORTRAIT else 0
    iso = _logu(shot_rng, 1.0, 8.0)
    scene, illuminant = compose_scene(scene_rng)
    if split == "train":
        top = (CANVAS - FRAME[0]) // 2
        area = scene[top : top + FRAME[0]]
        window = (0, 0) + FRAME
    else:
        area = scene
        size = source_size(job["manipulation"])
        side = CANVAS - 32 * max(0, (CANVAS - size - 64) // 32)  # centred, offset on the 16-px grid
        window = ((CANVAS - side) // 2, (CANVAS - side) // 2, side, side)
    img = capture(cam, device, prnu(draw, c, device), area, illuminant, window, shot_rng, iso)
    img = np.ascontiguousarray(np.rot90(img, turns))
    data = encode_jpeg(img, cam)
    path = os.path.join(out_dir, job["path"])
    if split == "train":
        Path(path).write_bytes(data)
        return None
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    off = (CANVAS - size) // 2 - window[0]  # the full frame's centre crop, in window coordinates
    patch = manipulate(np.ascontiguousarray(decoded[off : off + size, off : off + size]), job["manipulation"])
    Image.fromarray(patch).save(path, format="TIFF")
    return {"fname": os.path.basename(path), "camera": CLASSES[c], "manipulation": job["manipulation"]}


def plan(draw: int, cameras: int, train_per_camera: int, test_per_camera: int, params: list[dict]) -> list[dict]:
    rng = np.random.default_rng([draw, 0x7E57])
    ids = rng.choice(16**7, cameras * test_per_camera, replace=False)
    jobs, k = [], 0
    for c in range(cameras):
        for i in range(train_per_camera):
            jobs.append(
                dict(
                    draw=draw,
                    camera=c,
                    split="train",
                    index=i,
                    params=params[c],
                    path=f"train/{CLASSES[c]}/({CLASSES[c]}){i + 1}.jpg",
                )
            )
        for i in range(test_per_camera):
            manip = "none"
            if i % 2:
                manip, k = MANIPULATIONS[k % len(MANIPULATIONS)], k + 1
            name = f"img_{int(ids[c * test_per_camera + i]):07x}_{'manip' if i % 2 else 'unalt'}.tif"
            jobs.append(
                dict(
                    draw=draw,
                    camera=c,
                    split="test",
                    index=i,
                    params=params[c],
                    manipulation=manip,
                    path=f"test/{name}",
                )
            )
    return jobs


def _init_worker():
    cv2.setNumThreads(1)
    load_sources()


def generate(
    out: Path,
    draw: int = 0,
    cameras: int = 5,
    train_per_camera: int = 40,
    test_per_camera: int = 20,
    workers: int | None = None,
) -> dict:
    if not 1 <= cameras <= len(CLASSES):
        raise SystemExit(f"--cameras must be in 1..{len(CLASSES)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SystemExit(f"{out}: exists and is not an empty folder")
    start = time.perf_counter()
    params = [draw_camera(draw, c) for c in range(cameras)]
    jobs = plan(draw, cameras, train_per_camera, test_per_camera, params)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "test").mkdir()
        for c in range(cameras):
            (tmp / "train" / CLASSES[c]).mkdir(parents=True)
        workers = min(os.cpu_count() or 1, len(jobs)) if workers is None else workers
        if workers <= 1:
            _init_worker()
            rows = [render(j, str(tmp)) for j in jobs]
        else:
            for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ.setdefault(var, "1")  # the workers inherit it
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, ctx, initializer=_init_worker) as pool:
                rows = list(pool.map(render, jobs, [str(tmp)] * len(jobs), chunksize=2))
        rows = sorted((r for r in rows if r), key=lambda r: r["fname"])
        with open(tmp / "test_labels.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["fname", "camera", "manipulation"])
            writer.writeheader()
            writer.writerows(rows)
        info = {
            "generator": "benchmarks/checkset.py",
            "checkset_version": VERSION,
            "draw": draw,
            "train_per_camera": train_per_camera,
            "test_per_camera": test_per_camera,
            "frame": list(FRAME),
            "test_sensor_window": [CANVAS, CANVAS],
            "patch": PATCH,
            "portrait": PORTRAIT,
            "sources": [f"{m}:{n}" for m, n in SOURCES],
            "cameras": {CLASSES[c]: p for c, p in enumerate(params)},
            "seconds": round(time.perf_counter() - start, 1),
        }
        (tmp / "cameras.json").write_text(json.dumps(info, indent=1))
        tmp.chmod(0o755)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="output folder (must not exist, or be empty)")
    p.add_argument("--draw", type=int, default=0, help="which camera set (seeds cameras, scenes and noise)")
    p.add_argument("--cameras", type=int, default=5)
    p.add_argument("--train-per-camera", type=int, default=40)
    p.add_argument("--test-per-camera", type=int, default=20)
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU)")
    args = p.parse_args(argv)
    info = generate(args.out, args.draw, args.cameras, args.train_per_camera, args.test_per_camera, args.workers)
    print(f"wrote {args.out} (draw {args.draw}, {args.cameras} cameras) in {info['seconds']} s")


if __name__ == "__main__":
    main()
