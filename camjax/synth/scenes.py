"""Scenes: one procedural distribution for every camera, in linear scene-referred RGB.

Everything in a scene is sized in pixels and metered on the centre, so a window rendered
for a test patch has a full frame's statistics.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np
import scipy.special

# --------------------------------------------------------------------------------------
# Scenes: one distribution for every camera, linear scene-referred RGB.


def _srgb_decode(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def srgb_encode(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.maximum(x, 0.0031308) ** (1 / 2.4) - 0.055)


_DECODE_LUT = _srgb_decode(np.arange(256) / 255.0).astype(np.float32).reshape(1, 256)

# Illuminant colour (linear RGB, G = 1) against colour temperature, interpolated in mired.
_CCT = np.array([2500, 3200, 4000, 5000, 6500, 8000, 10000], float)
_CCT_RGB = np.array(
    [
        [1.00, 0.55, 0.22],
        [1.00, 0.68, 0.39],
        [1.00, 0.80, 0.60],
        [1.00, 0.90, 0.80],
        [1.00, 1.00, 1.00],
        [0.92, 0.98, 1.12],
        [0.85, 0.95, 1.25],
    ]
)


def illuminant(cct: float) -> np.ndarray:
    mired = 1e6 / _CCT
    rgb = np.array([np.interp(-1e6 / cct, -mired, _CCT_RGB[:, c]) for c in range(3)])
    return rgb / rgb[1]


# Normal quantiles at 2^16 evenly spaced probabilities: sampling them is 3x faster than
# Generator.standard_normal and indistinguishable from it after the sensor's quantisation.
_NORMAL_QUANTILES = scipy.special.ndtri((np.arange(2**16) + 0.5) / 2**16).astype(np.float32)


def gaussian(rng: np.random.Generator, shape) -> np.ndarray:
    """Standard normal float32 samples (truncated at 4.2 sigma)."""
    return _NORMAL_QUANTILES.take(rng.integers(0, 2**16, shape, dtype=np.uint16), mode="wrap")


def _upsampled_noise(rng, h, w, cell) -> np.ndarray:
    """Smooth zero-mean noise with features about `cell` px wide."""
    small = rng.standard_normal((h // cell + 3, w // cell + 3)).astype(np.float32)
    big = cv2.resize(small, ((w // cell + 3) * cell, (h // cell + 3) * cell), interpolation=cv2.INTER_CUBIC)
    return big[cell : cell + h, cell : cell + w]


def fractal_noise(rng, h, w, roughness, octaves=9) -> np.ndarray:
    """Multi-octave noise, cells of 2^(octaves-1) px down to 1 px; each finer octave's
    amplitude is `roughness` times the coarser's. Scaled to unit variance by formula, not
    by measurement, so that a window has the statistics of a whole frame."""
    shapes = [(-(-h // 2**k), -(-w // 2**k)) for k in range(octaves)]
    acc = rng.random(shapes[-1], dtype=np.float32) - 0.5
    amp, total = 1.0, 1.0
    for sh, sw in reversed(shapes[:-1]):
        acc = cv2.resize(acc, (sw, sh), interpolation=cv2.INTER_CUBIC)
        amp *= roughness
        total += amp**2
        noise = rng.random((sh, sw), dtype=np.float32)
        noise -= 0.5
        noise *= amp
        acc += noise
    acc *= np.float32(1 / np.sqrt(total / 12))  # uniform noise has variance 1/12
    return acc


def _random_colour(rng) -> tuple[int, int, int]:
    """An sRGB-coded surface colour: mostly muted, sometimes saturated."""
    value = float(np.exp(rng.uniform(np.log(0.04), np.log(0.95))))
    sat = float(rng.beta(1.2, 2.5))
    r, g, b = colorsys.hsv_to_rgb(float(rng.random()), sat, value)
    return tuple(round(255 * x) for x in (r, g, b))


def _draw_shape(rng, canvas, cx, cy, r, colour, shift=4):
    """One random shape with antialiased, sub-pixel-positioned edges."""
    s = 1 << shift
    kind = rng.integers(4)
    if kind == 0:
        axes = (max(1, int(r * s)), max(1, int(r * s * rng.uniform(0.2, 1.0))))
        cv2.ellipse(
            canvas, (int(cx * s), int(cy * s)), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA, shift
        )
    elif kind == 3 and r > 3:
        a = rng.uniform(0, 2 * np.pi)
        p1 = (int((cx - r * np.cos(a)) * s), int((cy - r * np.sin(a)) * s))
        p2 = (int((cx + r * np.cos(a)) * s), int((cy + r * np.sin(a)) * s))
        cv2.line(canvas, p1, p2, colour, int(rng.integers(1, max(2, int(r / 4)))), cv2.LINE_AA, shift)
    else:
        n = int(rng.integers(3, 9)) if kind == 2 else 4
        angles = (
            np.sort(rng.uniform(0, 2 * np.pi, n))
            if kind == 2
            else (rng.uniform(0, np.pi) + np.arange(4) * np.pi / 2 + rng.uniform(-0.4, 0.4, 4))
        )
        radii = r * rng.uniform(0.5, 1.0, n)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], -1)
        cv2.fillPoly(canvas, [np.round(pts * s).astype(np.int32)], colour, cv2.LINE_AA, shift)


def _grating(rng, h, w, lin):
    """A patch of fine periodic texture (fabric, brick, blinds) multiplied into `lin`."""
    r = float(rng.uniform(30, 220))
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    y0, y1 = int(max(0, cy - r)), int(min(h, cy + r + 1))
    x0, x1 = int(max(0, cx - r)), int(min(w, cx + r + 1))
    if y1 - y0 < 2 or x1 - x0 < 2:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    _draw_shape(rng, mask, cx - x0, cy - y0, r, 255)
    period = float(np.exp(rng.uniform(np.log(2.2), np.log(12.0))))
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    phase = (np.cos(angle) * xx + np.sin(angle) * yy) * (2 * np.pi / period) + rng.uniform(0, 2 * np.pi)
    wave = np.sin(phase)
    if rng.random() < 0.5:
        wave = np.sign(wave)  # sharp stripes: aliased by the sensor, as real ones are
    depth = rng.uniform(0.2, 0.8)
    gain = 1 + depth * (mask.astype(np.float32) / 255) * wave
    lin[y0:y1, x0:x1] *= gain[..., None]


def _specular(rng, h, w, scene, colour):
    """A small highlight, far above diffuse white: it clips, as real ones do."""
    sigma = float(np.exp(rng.uniform(np.log(0.7), np.log(6.0))))
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    rad = int(4 * sigma) + 1
    y0, y1 = int(max(0, cy - rad)), int(min(h, cy + rad + 1))
    x0, x1 = int(max(0, cx - rad)), int(min(w, cx + rad + 1))
    if y1 <= y0 or x1 <= x0:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)) * rng.uniform(1.0, 20.0)
    scene[y0:y1, x0:x1] += blob[..., None] * colour.astype(np.float32)


METER = 512  # side of the central square that exposure and white balance measure


def centre(h: int, w: int):
    """The central METER-square of a frame or of a window centred on it."""
    m = min(METER, h, w)
    return np.s_[(h - m) // 2 : (h + m) // 2, (w - m) // 2 : (w + m) // 2]


def render_scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random scene (h, w, 3), float32 linear RGB, mean central luminance 0.18 x 2^EV.

    Dead-leaves shapes with antialiased edges, 1/f texture, fine gratings, smooth
    illumination of a random colour temperature, specular highlights. Every size is in
    pixels, so a window of a frame has the statistics of a whole frame.
    """
    # Background: a gradient between two colours over about 2000 px.
    top, bottom = (np.array(_random_colour(rng), np.float32) for _ in range(2))
    gy, gx = np.mgrid[:9, :9].astype(np.float32) / 8
    a = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + (np.cos(a) * (gx - 0.5) * w + np.sin(a) * (gy - 0.5) * h) / 2000, 0, 1)[..., None]
    small = np.round(top * (1 - t) + bottom * t).astype(np.uint8)
    canvas = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)

    n = int(rng.uniform(80, 200) * h * w / 1.8e6) + 1
    radii = np.sort(2.0 * (400 / 2.0) ** rng.random(n))[::-1]  # log-uniform: 1/r^2 density
    for r in radii:
        _draw_shape(rng, canvas, rng.uniform(-r / 2, w + r / 2), rng.uniform(-r / 2, h + r / 2), r, _random_colour(rng))
    lin = cv2.LUT(canvas, np.repeat(_DECODE_LUT[..., None], 3, -1))

    # Texture of varying strength (some surfaces smooth, some rough) and smooth illumination
    # (shading, a linear falloff, a little colour variation), both multiplicative. The
    # smooth fields are built at 1/8 scale (their features are 16 px and larger).
    lh, lw = h // 8 + 1, w // 8 + 1
    strength = np.clip(0.5 + 0.5 * _upsampled_noise(rng, lh, lw, 16), 0, 1) * rng.uniform(0.05, 0.6)
    light = illuminant(float(np.exp(rng.uniform(np.log(2700), np.log(9000))))).astype(np.float32)
    shade = np.exp(0.5 * _upsampled_noise(rng, lh, lw, 32))
    ang, slope = rng.uniform(0, 2 * np.pi), rng.uniform(0, 1.0) / 1000 * 8
    yy, xx = np.mgrid[:lh, :lw].astype(np.float32)
    shade *= np.maximum(1 + slope * (np.cos(ang) * (xx - lw / 2) + np.sin(ang) * (yy - lh / 2)), 0.2)
    tint = np.stack([1 + 0.05 * _upsampled_noise(rng, lh, lw, 2) for _ in range(3)], -1)
    field = cv2.resize((tint * light * shade[..., None]).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    texture = fractal_noise(rng, h, w, roughness=float(rng.uniform(0.55, 0.95)))
    texture *= cv2.resize(strength.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    gain = cv2.exp(texture)
    lin = cv2.multiply(lin, cv2.multiply(field, cv2.merge([gain, gain, gain])), dst=lin)
    for _ in range(rng.poisson(1.5 * h * w / 1.8e6)):
        _grating(rng, h, w, lin)

    # Centre-weighted exposure: the region metered is the same in a window and a frame.
    lum = float((lin[centre(h, w)][::4, ::4] @ np.array([0.2126, 0.7152, 0.0722], np.float32)).mean())
    lin *= np.float32(0.18 * 2 ** rng.normal(0, 0.4) / max(lum, 1e-6))
    for _ in range(rng.poisson(3 * h * w / 1.8e6)):
        _specular(rng, h, w, lin, light)
    return lin
