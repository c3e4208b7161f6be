"""The imaging pipeline inside a virtual camera: sensor, mosaic, demosaicing, development, JPEG.

`capture` turns a scene into the mosaic a device records (crosstalk, PRNU, shot and read
noise, ADC); `develop` into the picture the model stores (white balance, demosaicing,
colour matrix, tone curve, chroma denoising, sharpening); `encode_jpeg` into its file.
"""

from __future__ import annotations

import functools
import io

import cv2
import numpy as np
from PIL import Image

from camjax.synth.camera_models import SUBSAMPLING, CameraModel, Device, jpeg_qtables
from camjax.synth.scenes import centre, gaussian, render_scene, srgb_encode

# --------------------------------------------------------------------------------------
# Sensor.


def crosstalk_matrix(model: CameraModel) -> np.ndarray:
    """Scene RGB -> raw RGB: colour filter overlap, then the channels' sensitivities."""
    leak = np.array([[0, 0.7, 0.15], [0.3, 0, 0.3], [0.1, 0.6, 0]])
    s = np.eye(3) + model.crosstalk * leak / 0.5
    s /= s.sum(1, keepdims=True)
    return np.diag(model.sensitivity) @ s


def colour_matrix(model: CameraModel) -> np.ndarray:
    """White-balanced raw RGB -> output linear RGB (rows sum to 1)."""
    s = crosstalk_matrix(model)
    s_wb = s / (s @ np.ones(3))[:, None]  # the raw response after white balance
    luma = np.array([0.2126, 0.7152, 0.0722])
    look = model.saturation * np.eye(3) + (1 - model.saturation) * np.outer(np.ones(3), luma)
    return look @ np.linalg.inv(s_wb)


@functools.lru_cache(maxsize=4)
def device_pattern(dev: Device, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The device's PRNU factor (H, W) and its hot pixels (flat indices, added signal)."""
    rng = np.random.default_rng(dev.seed)
    white = gaussian(rng, shape)
    low = cv2.GaussianBlur(gaussian(rng, shape), (0, 0), 1.5)
    low *= 1 / float(low.std())
    k = 0.85 * white + 0.5 * low
    k *= dev.prnu / float(k.std())
    k += 1
    hot = rng.choice(shape[0] * shape[1], dev.hot_pixels, replace=False)
    return k, hot, rng.uniform(0.02, 0.3, dev.hot_pixels).astype(np.float32)


def cfa_phase(cfa: str, top: int, left: int) -> str:
    """The Bayer pattern seen from a window starting at (top, left)."""
    return "".join(cfa[2 * ((dy + top) % 2) + (dx + left) % 2] for dy in range(2) for dx in range(2))


def _sites(cfa: str):
    return [(i // 2, i % 2, "RGB".index(c)) for i, c in enumerate(cfa)]


# --------------------------------------------------------------------------------------
# Demosaicing: float32 (H, W) mosaic -> (H, W, 3). Borders reflect, which keeps the phase.

_K_BILINEAR_G = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float32) / 4
_K_BILINEAR_RB = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 4

# Malvar, He and Cutler (2004): gradient-corrected bilinear, 5x5 kernels (x 1/8).
_K_MHC_G = (
    np.array([[0, 0, -1, 0, 0], [0, 0, 2, 0, 0], [-1, 2, 4, 2, -1], [0, 0, 2, 0, 0], [0, 0, -1, 0, 0]], np.float32) / 8
)
_K_MHC_ROW = (
    np.array(
        [[0, 0, 0.5, 0, 0], [0, -1, 0, -1, 0], [-1, 4, 5, 4, -1], [0, -1, 0, -1, 0], [0, 0, 0.5, 0, 0]], np.float32
    )
    / 8
)  # colour of the same row, at green
_K_MHC_COL = np.ascontiguousarray(_K_MHC_ROW.T)  # colour of the same column, at green
_K_MHC_DIAG = (
    np.array(
        [[0, 0, -1.5, 0, 0], [0, 2, 0, 2, 0], [-1.5, 0, 6, 0, -1.5], [0, 2, 0, 2, 0], [0, 0, -1.5, 0, 0]], np.float32
    )
    / 8
)  # red at blue and blue at red


def _filter(x, k):
    return cv2.filter2D(x, cv2.CV_32F, k, borderType=cv2.BORDER_REFLECT_101)


def _scatter(mosaic, cfa, channel):
    plane = np.zeros_like(mosaic)
    for dy, dx, c in _sites(cfa):
        if c == channel:
            plane[dy::2, dx::2] = mosaic[dy::2, dx::2]
    return plane


def demosaic_bilinear(mosaic: np.ndarray, cfa: str) -> np.ndarray:
    return cv2.merge([_filter(_scatter(mosaic, cfa, c), _K_BILINEAR_G if c == 1 else _K_BILINEAR_RB) for c in range(3)])


def demosaic_mhc(mosaic: np.ndarray, cfa: str) -> np.ndarray:
    f_g, f_row, f_col, f_diag = (_filter(mosaic, k) for k in (_K_MHC_G, _K_MHC_ROW, _K_MHC_COL, _K_MHC_DIAG))
    planes = [np.empty_like(mosaic) for _ in range(3)]
    sites = _sites(cfa)
    colour_at = {(dy, dx): c for dy, dx, c in sites}
    for dy, dx, c in sites:
        s = np.s_[dy::2, dx::2]
        planes[c][s] = mosaic[s]
        if c == 1:
            row_colour = colour_at[(dy, 1 - dx)]  # red or blue: the other colour of this row
            planes[row_colour][s] = f_row[s]
            planes[2 - row_colour][s] = f_col[s]
        else:
            planes[1][s] = f_g[s]
            planes[2 - c][s] = f_diag[s]
    return cv2.merge(planes)


def demosaic_hamilton_adams(mosaic: np.ndarray, cfa: str) -> np.ndarray:
    """Edge-directed green (Hamilton-Adams), then bilinear colour differences for red/blue."""
    est = np.array([[-0.25, 0.5, 0.5, 0.5, -0.25]], np.float32)
    grad1 = np.array([[0, 1, 0, -1, 0]], np.float32)
    grad2 = np.array([[-1, 0, 2, 0, -1]], np.float32)
    gh, gv = _filter(mosaic, est), _filter(mosaic, est.T)
    dh = np.abs(_filter(mosaic, grad1)) + np.abs(_filter(mosaic, grad2))  # horizontal activity
    dv = np.abs(_filter(mosaic, grad1.T)) + np.abs(_filter(mosaic, grad2.T))
    green = mosaic.copy()
    for dy, dx, c in _sites(cfa):
        if c != 1:  # interpolate along the smoother direction, average on ties
            s = np.s_[dy::2, dx::2]
            pick = np.sign(dv[s] - dh[s])
            pick *= 0.5
            pick += 0.5
            green[s] = gv[s] + pick * (gh[s] - gv[s])
    diff = mosaic - green
    planes = [green + _filter(_scatter(diff, cfa, c), _K_BILINEAR_RB) if c != 1 else green for c in range(3)]
    return cv2.merge(planes)


DEMOSAIC = {"bilinear": demosaic_bilinear, "mhc": demosaic_mhc, "hamilton_adams": demosaic_hamilton_adams}


# --------------------------------------------------------------------------------------
# Rendering in the camera.


@functools.cache
def tone_lut(gamma: float, contrast: float, bits: int = 16) -> np.ndarray:
    """Linear [0, 1] (quantised to `bits`) -> uint8: a gamma curve, then an S-curve."""
    x = np.linspace(0, 1, 2**bits)
    if gamma == 0:
        y = srgb_encode(x)
    else:
        eps = 0.004  # soft toe: a pure power law has an infinite slope at black
        y = ((x + eps) ** (1 / gamma) - eps ** (1 / gamma)) / ((1 + eps) ** (1 / gamma) - eps ** (1 / gamma))
    y = y - contrast * np.sin(2 * np.pi * y) / (2 * np.pi)
    return np.clip(np.round(255 * y), 0, 255).astype(np.uint8)


def _cv2_has_lut16() -> bool:
    try:
        return cv2.LUT(np.zeros((1, 1), np.uint16), np.zeros((1, 65536), np.uint8)).dtype == np.uint8
    except cv2.error:
        return False


def _lut16(index: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """lut[index] for uint16 indices: OpenCV 5's 16-bit LUT is 6x faster than np.take."""
    if _HAS_LUT16:
        return cv2.LUT(index, lut.reshape(1, -1))
    return lut.take(index, mode="wrap")


_HAS_LUT16 = _cv2_has_lut16()


def sensor_window(shape: tuple[int, int], turns: int, top: int, left: int, height: int, width: int):
    """The sensor rectangle (top, left, height, width) that np.rot90(., turns) maps onto the
    stored image's rectangle (top, left, height, width)."""
    h, w = shape
    if turns == 0:
        return top, left, height, width
    if turns == 1:
        return left, w - top - height, width, height
    if turns == 3:
        return h - left - width, top, width, height
    raise ValueError(f"unsupported rotation: {turns} quarter turns")


_CV_ROTATE = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 3: cv2.ROTATE_90_CLOCKWISE}  # = np.rot90(., turns)


def expose(
    model: CameraModel, dev: Device, scene: np.ndarray, origin: tuple[int, int], cfa: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Optics and sensor: the raw mosaic (ADC codes, float32) and the raw grey-world mean.

    Lens blur, colour filters with crosstalk, PRNU, signal-dependent shot noise and read
    noise at a random ISO, hot pixels, clipping at full well, the ADC's quantisation.
    """
    if model.lens_sigma > 0:
        scene = cv2.GaussianBlur(scene, (5, 5), model.lens_sigma, borderType=cv2.BORDER_REFLECT_101)
    raw = cv2.transform(scene, crosstalk_matrix(model).astype(np.float32))
    h, w = scene.shape[:2]
    top, left = origin
    mosaic = np.empty((h, w), np.float32)
    for dy, dx, c in _sites(cfa):
        mosaic[dy::2, dx::2] = raw[dy::2, dx::2, c]
    prnu, hot, hot_signal = device_pattern(dev, model.shape)
    mosaic *= prnu[top : top + h, left : left + w]
    scale = dev.noise_scale * float(np.exp(rng.uniform(0, np.log(12.0))))  # x ISO / base ISO
    var = mosaic * np.float32(model.shot_noise * scale)
    var += np.float32((model.read_noise * scale) ** 2)
    noise = gaussian(rng, (h, w))
    noise *= cv2.sqrt(var)
    mosaic += noise
    hy, hx = np.unravel_index(hot, model.shape)
    inside = (hy >= top) & (hy < top + h) & (hx >= left) & (hx < left + w)
    mosaic[hy[inside] - top, hx[inside] - left] += hot_signal[inside]
    np.clip(mosaic, 0, 1, out=mosaic)
    mosaic *= np.float32(2**model.adc_bits - 1)
    np.round(mosaic, out=mosaic)
    return mosaic, raw[centre(h, w)][::8, ::8].reshape(-1, 3).mean(0)


def white_balance(
    model: CameraModel, mosaic: np.ndarray, cfa: str, light: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """ADC codes -> white-balanced [0, 1] mosaic, from a slightly wrong estimate of the light."""
    gains = light[1] / light * np.exp(rng.normal(0, [0.03, 0, 0.03]))
    gains /= 2**model.adc_bits - 1
    for dy, dx, c in _sites(cfa):
        mosaic[dy::2, dx::2] *= np.float32(gains[c])
    np.minimum(mosaic, 1, out=mosaic)
    return mosaic


def develop(model: CameraModel, rgb: np.ndarray) -> np.ndarray:
    """Demosaiced linear RGB -> the 8-bit image the camera hands to its JPEG encoder."""
    lut = tone_lut(model.tone_gamma, model.tone_contrast)
    top = len(lut) - 1
    matrix = np.concatenate([colour_matrix(model) * top, np.full((3, 1), 0.5)], 1)  # to LUT index + 0.5
    rgb = cv2.transform(rgb, matrix.astype(np.float32))
    np.clip(rgb, 0, top, out=rgb)
    img = _lut16(rgb.astype(np.uint16), lut)
    if model.chroma_denoise > 0:
        ycc = cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb)
        for c in (1, 2):
            ycc[..., c] = cv2.GaussianBlur(ycc[..., c], (0, 0), model.chroma_denoise)
        img = cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)
    if model.sharpen_amount > 0:
        blur = cv2.GaussianBlur(img, (0, 0), model.sharpen_sigma)
        img = cv2.addWeighted(img, 1 + model.sharpen_amount, blur, -model.sharpen_amount, 0)
    return img


def capture(
    model: CameraModel, dev: Device, rng_scene, rng_shot, turns: int, window: tuple[int, int, int, int]
) -> np.ndarray:
    """Photograph a random scene; return the stored window (after rotation) as uint8 RGB.

    `window` is (top, left, height, width) in the stored (rotated) frame's coordinates;
    only the sensor region behind it is rendered, with the full frame's Bayer phase.
    """
    top, left, h, w = sensor_window(model.shape, turns, *window)
    cfa = cfa_phase(model.cfa, top, left)
    scene = render_scene(rng_scene, h, w)
    mosaic, light = expose(model, dev, scene, (top, left), cfa, rng_shot)
    mosaic = white_balance(model, mosaic, cfa, light, rng_shot)
    img = develop(model, DEMOSAIC[model.demosaic](mosaic, cfa))
    return img if turns == 0 else cv2.rotate(img, _CV_ROTATE[turns])


def encode_jpeg(img: np.ndarray, model: CameraModel) -> bytes:
    """The camera's own JPEG: its tables, subsampling and EXIF Make/Model."""
    exif = Image.Exif()
    exif[0x010F] = model.make
    exif[0x0110] = model.exif_model
    buf = io.BytesIO()
    Image.fromarray(img).save(
        buf,
        format="JPEG",
        qtables=jpeg_qtables(model.jpeg_tables, model.jpeg_quality),
        subsampling=SUBSAMPLING[model.subsampling],
        exif=exif.tobytes(),
    )
    return buf.getvalue()
