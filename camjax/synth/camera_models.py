"""The virtual camera models and devices, and the JPEG tables each model encodes with.

Ten models stand in for the ten challenge classes (names, aspect ratios and EXIF strings
borrowed; every parameter invented). A device is one unit of a model: its own PRNU pattern
and noise levels. Pairs of models share most of their pipeline, as the real ones do.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from camjax.cameras import CHALLENGE_CLASSES, NATIVE_RESOLUTIONS

MCU = 16  # JPEG MCU side for 4:2:0; windows start on multiples of it
SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


@dataclasses.dataclass(frozen=True)
class CameraModel:
    """One virtual camera model: everything shared by its devices."""

    name: str  # the challenge class it stands in for
    make: str  # EXIF Make / Model
    exif_model: str
    shape: tuple[int, int]  # sensor (H, W), landscape, at synthetic scale
    portrait: float  # fraction of frames stored rotated by a quarter turn
    cfa: str  # Bayer pattern, the top-left 2x2 read row by row
    demosaic: str  # bilinear | mhc | hamilton_adams
    lens_sigma: float  # optical blur (Gaussian PSF sigma, px)
    crosstalk: float  # spectral overlap of the colour filters
    sensitivity: tuple[float, float, float]  # raw response of R, G, B to white
    saturation: float  # the colour matrix's rendering intent (1: colorimetric)
    tone_gamma: float  # 0: the sRGB curve; otherwise a power law with a soft toe
    tone_contrast: float  # strength of the S-curve on top of it
    chroma_denoise: float  # sigma of the Cb/Cr blur (px), 0: none
    sharpen_sigma: float  # unsharp mask radius (px)
    sharpen_amount: float  # 0: no sharpening
    adc_bits: int
    jpeg_tables: str  # ijg (libjpeg's scaled Annex K tables) or a custom family below
    jpeg_quality: int  # the IJG scaling quality applied to those tables
    subsampling: str  # 4:4:4 | 4:2:2 | 4:2:0
    shot_noise: float  # variance per unit of normalised signal at base ISO
    read_noise: float  # standard deviation at base ISO (normalised units)
    prnu: float  # standard deviation of the multiplicative PRNU factor


def _landscape(name: str, short: int = 1088) -> tuple[int, int]:
    """The real sensor's aspect ratio at a 1088-px short side (the largest test window)."""
    long_side, short_side = NATIVE_RESOLUTIONS[name][0]
    return short, 2 * round(short * long_side / short_side / 2)


def _model(name, make, exif_model, **kw) -> CameraModel:
    return CameraModel(name=name, make=make, exif_model=exif_model, shape=_landscape(name), **kw)


# Pairs share most of their pipeline on purpose; quality differences are small.
MODELS: tuple[CameraModel, ...] = (
    _model(
        "HTC-1-M7",
        "HTC",
        "HTC One",
        portrait=0.3,
        cfa="GRBG",
        demosaic="hamilton_adams",
        lens_sigma=0.55,
        crosstalk=0.12,
        sensitivity=(0.55, 1.0, 0.70),
        saturation=1.05,
        tone_gamma=0.0,
        tone_contrast=0.10,
        chroma_denoise=1.0,
        sharpen_sigma=1.0,
        sharpen_amount=0.7,
        adc_bits=10,
        jpeg_tables="ijg",
        jpeg_quality=90,
        subsampling="4:2:0",
        shot_noise=3.0e-4,
        read_noise=2.0e-3,
        prnu=0.010,
    ),
    _model(
        "iPhone-4s",
        "Apple",
        "iPhone 4S",
        portrait=0.25,
        cfa="RGGB",
        demosaic="mhc",
        lens_sigma=0.60,
        crosstalk=0.15,
        sensitivity=(0.50, 1.0, 0.65),
        saturation=1.00,
        tone_gamma=2.2,
        tone_contrast=0.15,
        chroma_denoise=1.5,
        sharpen_sigma=0.8,
        sharpen_amount=0.5,
        adc_bits=12,
        jpeg_tables="apple",
        jpeg_quality=92,
        subsampling="4:2:0",
        shot_noise=2.5e-4,
        read_noise=1.5e-3,
        prnu=0.008,
    ),
    _model(
        "iPhone-6",
        "Apple",
        "iPhone 6",
        portrait=0.25,
        cfa="RGGB",
        demosaic="mhc",
        lens_sigma=0.55,
        crosstalk=0.11,
        sensitivity=(0.52, 1.0, 0.68),
        saturation=1.06,
        tone_gamma=2.2,
        tone_contrast=0.18,
        chroma_denoise=1.5,
        sharpen_sigma=0.8,
        sharpen_amount=0.6,
        adc_bits=12,
        jpeg_tables="apple",
        jpeg_quality=93,
        subsampling="4:2:0",
        shot_noise=2.0e-4,
        read_noise=1.2e-3,
        prnu=0.007,
    ),
    _model(
        "LG-Nexus-5x",
        "LGE",
        "Nexus 5X",
        portrait=0.2,
        cfa="BGGR",
        demosaic="hamilton_adams",
        lens_sigma=0.50,
        crosstalk=0.10,
        sensitivity=(0.58, 1.0, 0.72),
        saturation=1.02,
        tone_gamma=2.2,
        tone_contrast=0.05,
        chroma_denoise=0.0,
        sharpen_sigma=1.2,
        sharpen_amount=0.3,
        adc_bits=10,
        jpeg_tables="ijg",
        jpeg_quality=95,
        subsampling="4:4:4",
        shot_noise=2.2e-4,
        read_noise=1.6e-3,
        prnu=0.009,
    ),
    _model(
        "Motorola-Droid-Maxx",
        "motorola",
        "XT1080",
        portrait=0.35,
        cfa="GBRG",
        demosaic="bilinear",
        lens_sigma=0.65,
        crosstalk=0.14,
        sensitivity=(0.53, 1.0, 0.66),
        saturation=1.08,
        tone_gamma=0.0,
        tone_contrast=0.12,
        chroma_denoise=1.0,
        sharpen_sigma=1.0,
        sharpen_amount=0.8,
        adc_bits=10,
        jpeg_tables="ijg",
        jpeg_quality=86,
        subsampling="4:2:0",
        shot_noise=3.5e-4,
        read_noise=2.2e-3,
        prnu=0.011,
    ),
    _model(
        "Motorola-Nexus-6",
        "motorola",
        "Nexus 6",
        portrait=0.25,
        cfa="RGGB",
        demosaic="hamilton_adams",
        lens_sigma=0.55,
        crosstalk=0.12,
        sensitivity=(0.56, 1.0, 0.70),
        saturation=1.00,
        tone_gamma=0.0,
        tone_contrast=0.08,
        chroma_denoise=0.0,
        sharpen_sigma=1.2,
        sharpen_amount=0.5,
        adc_bits=10,
        jpeg_tables="ijg",
        jpeg_quality=95,
        subsampling="4:2:0",
        shot_noise=2.6e-4,
        read_noise=1.8e-3,
        prnu=0.009,
    ),
    _model(
        "Motorola-X",
        "motorola",
        "XT1096",
        portrait=0.25,
        cfa="RGGB",
        demosaic="hamilton_adams",
        lens_sigma=0.60,
        crosstalk=0.14,
        sensitivity=(0.54, 1.0, 0.67),
        saturation=1.06,
        tone_gamma=0.0,
        tone_contrast=0.10,
        chroma_denoise=0.0,
        sharpen_sigma=1.2,
        sharpen_amount=0.4,
        adc_bits=10,
        jpeg_tables="ijg",
        jpeg_quality=94,
        subsampling="4:2:0",
        shot_noise=3.0e-4,
        read_noise=2.0e-3,
        prnu=0.010,
    ),
    _model(
        "Samsung-Galaxy-Note3",
        "SAMSUNG",
        "SM-N9005",
        portrait=0.3,
        cfa="GRBG",
        demosaic="mhc",
        lens_sigma=0.55,
        crosstalk=0.13,
        sensitivity=(0.55, 1.0, 0.69),
        saturation=1.10,
        tone_gamma=0.0,
        tone_contrast=0.14,
        chroma_denoise=1.0,
        sharpen_sigma=0.9,
        sharpen_amount=0.6,
        adc_bits=10,
        jpeg_tables="samsung",
        jpeg_quality=96,
        subsampling="4:2:0",
        shot_noise=2.4e-4,
        read_noise=1.7e-3,
        prnu=0.009,
    ),
    _model(
        "Samsung-Galaxy-S4",
        "SAMSUNG",
        "GT-I9505",
        portrait=0.3,
        cfa="GRBG",
        demosaic="mhc",
        lens_sigma=0.60,
        crosstalk=0.10,
        sensitivity=(0.58, 1.0, 0.73),
        saturation=1.04,
        tone_gamma=0.0,
        tone_contrast=0.14,
        chroma_denoise=1.0,
        sharpen_sigma=0.9,
        sharpen_amount=0.7,
        adc_bits=10,
        jpeg_tables="samsung",
        jpeg_quality=96,
        subsampling="4:2:0",
        shot_noise=2.8e-4,
        read_noise=1.9e-3,
        prnu=0.010,
    ),
    _model(
        "Sony-NEX-7",
        "SONY",
        "NEX-7",
        portrait=0.15,
        cfa="RGGB",
        demosaic="mhc",
        lens_sigma=0.70,
        crosstalk=0.08,
        sensitivity=(0.60, 1.0, 0.75),
        saturation=1.00,
        tone_gamma=2.4,
        tone_contrast=0.20,
        chroma_denoise=0.0,
        sharpen_sigma=0.7,
        sharpen_amount=0.25,
        adc_bits=12,
        jpeg_tables="sony",
        jpeg_quality=97,
        subsampling="4:2:2",
        shot_noise=0.9e-4,
        read_noise=0.8e-3,
        prnu=0.006,
    ),
)
assert tuple(m.name for m in MODELS) == CHALLENGE_CLASSES


@dataclasses.dataclass(frozen=True)
class Device:
    """One physical unit of a model: its own PRNU, noise level and hot pixels."""

    model: int  # index into MODELS
    unit: int  # 1: the training device, 2: the test device
    seed: int  # of the PRNU pattern and the hot pixels
    prnu: float
    noise_scale: float  # multiplies the model's shot and read noise
    hot_pixels: int


def device(seed: int, model: int, unit: int) -> Device:
    """Unit 1 or 2 of a model, drawn from the dataset seed."""
    rng = np.random.default_rng([seed, 0xDE71CE, model, unit])
    m = MODELS[model]
    return Device(
        model=model,
        unit=unit,
        seed=int(rng.integers(2**31)),
        prnu=round(m.prnu * float(rng.uniform(0.8, 1.25)), 5),
        noise_scale=round(float(np.exp(rng.uniform(-0.3, 0.3))), 4),
        hot_pixels=int(rng.integers(0, 40)),
    )


# --------------------------------------------------------------------------------------
# JPEG tables.

_IJG_LUMA = np.array(
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
    ]
)
_IJG_CHROMA = np.full(64, 99)
_IJG_CHROMA[[0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 24, 25]] = [17, 18, 24, 47, 18, 21, 26, 66, 24, 26, 56, 47, 66]

# Custom families: base = a + b * (u + v) ** p + c * |u - v| (invented, not real vendor tables).
_CUSTOM = {
    "apple": ((10.0, 3.2, 1.15, 0.5), (12.0, 6.0, 1.10, 0.0)),
    "samsung": ((8.0, 4.5, 1.05, 1.0), (10.0, 8.0, 1.00, 0.0)),
    "sony": ((12.0, 2.5, 1.30, 0.3), (14.0, 5.0, 1.20, 0.0)),
}


def _custom_base(a, b, p, c) -> np.ndarray:
    v, u = np.mgrid[:8, :8]
    return np.clip(np.round(a + b * (u + v) ** p + c * np.abs(u - v)), 1, 255).astype(int).ravel()


def jpeg_qtables(family: str, quality: int) -> list[list[int]]:
    """Luma and chroma tables in natural (row-major) order, scaled as libjpeg scales quality."""
    if family == "ijg":
        bases = (_IJG_LUMA, _IJG_CHROMA)
    elif family in _CUSTOM:
        bases = tuple(_custom_base(*p) for p in _CUSTOM[family])
    else:
        raise ValueError(f"unknown JPEG table family {family!r}")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return [np.clip((base * scale + 50) // 100, 1, 255).tolist() for base in bases]
