"""Host-side versions of the challenge manipulations (PIL JPEG, OpenCV bicubic, gamma LUT).

These are the reference implementations: the synthetic test set is made with them and the
training pipeline augments with them, so train and test see the same operations.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image

from camjax.cameras import MANIPULATIONS, Manipulation


def jpeg_encode(image: np.ndarray, quality: int) -> bytes:
    """The JPEG file of `image` from libjpeg (PIL, IJG tables, 4:2:0) at `quality`."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def jpeg_compress(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode with libjpeg (PIL, IJG tables, 4:2:0) at `quality` and decode again."""
    return np.asarray(Image.open(io.BytesIO(jpeg_encode(image, quality))).convert("RGB"))


def resize(image: np.ndarray, scale: float) -> np.ndarray:
    """Bicubic resize by `scale` (OpenCV INTER_CUBIC, a = -0.75, half-pixel centres)."""
    h, w = image.shape[:2]
    size = (int(round(w * scale)), int(round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)


def gamma_table(gamma: float) -> np.ndarray:
    """The uint8 lookup table of out = round(255 * (in / 255) ** gamma)."""
    x = np.arange(256, dtype=np.float64) / 255.0
    return np.clip(np.round(255.0 * x**gamma), 0, 255).astype(np.uint8)


_GAMMA_TABLES = {m.value: gamma_table(m.value) for m in MANIPULATIONS if m.kind == "gamma"}


def gamma_correct(image: np.ndarray, gamma: float) -> np.ndarray:
    table = _GAMMA_TABLES.get(gamma)
    if table is None:
        table = gamma_table(gamma)
    return np.take(table, image)


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of manipulation: what it does to a uint8 HxWx3 image on the host (the
    reference; a resize changes the size), and the side of the source crop that turns into a
    `patch` x `patch` result. Its jitted twin is registered in `camjax.data.device_ops.DEVICE_KINDS`."""

    host: Callable[[np.ndarray, float], np.ndarray]
    source_size: Callable[[int, float], int] = lambda patch, value: patch


# kind -> Kind. A manipulation of a known kind is one entry in `camjax.cameras.MANIPULATIONS`;
# a new kind is one entry here and one in device_ops.DEVICE_KINDS. (The set is recorded in
# run.json: a run trained on another set is refused at evaluation.)
KINDS: dict[str, Kind] = {
    "none": Kind(host=lambda image, value: image),
    "jpeg": Kind(host=lambda image, quality: jpeg_compress(image, int(quality))),
    # Resizing by s needs ceil(patch / s) source pixels, resized and then centre-cropped to
    # `patch`, so every output shape is static.
    "resize": Kind(
        host=lambda image, scale: resize(image, scale), source_size=lambda patch, s: int(math.ceil(patch / s))
    ),
    "gamma": Kind(host=lambda image, g: gamma_correct(image, g)),
}
_unknown = sorted({m.kind for m in MANIPULATIONS} - set(KINDS))
if _unknown:
    raise ImportError(f"camjax.cameras.MANIPULATIONS uses manipulation kinds {_unknown} with no entry in KINDS")


def kind_of(manipulation: Manipulation) -> Kind:
    try:
        return KINDS[manipulation.kind]
    except KeyError:
        raise ValueError(
            f"manipulation {manipulation.name!r} has kind {manipulation.kind!r}, not registered in KINDS ({sorted(KINDS)})"
        ) from None


def source_size(patch: int, manipulation: Manipulation) -> int:
    """Side of the crop that `manipulation` turns into a `patch` x `patch` result."""
    return kind_of(manipulation).source_size(patch, manipulation.value)


def max_source_size(patch: int) -> int:
    return max(source_size(patch, m) for m in MANIPULATIONS)


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    if h < size or w < size:
        raise ValueError(f"cannot centre-crop {size}x{size} from {h}x{w}")
    top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


def apply(image: np.ndarray, manipulation: Manipulation) -> np.ndarray:
    """Apply one manipulation to a uint8 HxWx3 image; resizing changes the size."""
    return kind_of(manipulation).host(image, manipulation.value)


def manipulate_patch(source: np.ndarray, patch: int, manipulation: Manipulation) -> np.ndarray:
    """Make a `patch`-sized manipulated patch from the centre of `source`.

    `source` must be at least `source_size(patch, manipulation)` on each side; its centre
    crop of that size is manipulated and the result centre-cropped to `patch`.
    """
    region = centre_crop(source, source_size(patch, manipulation))
    out = apply(np.ascontiguousarray(region), manipulation)
    return np.ascontiguousarray(centre_crop(out, patch))


SHARED_LONG_SIDE = 2048  # what social networks and messengers scale a photo's long side down to
SHARED_QUALITIES = (75, 85)  # the range of JPEG qualities they re-encode at


def shared_photo(image: np.ndarray, quality: int, long_side: int = SHARED_LONG_SIDE) -> bytes:
    """The JPEG file a photo becomes when shared online: its long side scaled down to
    `long_side` (bicubic, never up), then re-encoded at `quality`."""
    scale = long_side / max(image.shape[:2])
    if scale < 1.0:
        image = resize(image, scale)
    return jpeg_encode(image, quality)
