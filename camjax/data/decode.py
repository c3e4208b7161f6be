"""Decodes image files to uint8 RGB arrays in sensor pixel order, failing loudly on bad input.

JPEGs go through libjpeg-turbo (`simplejpeg`, accurate DCT and fancy upsampling: the same
pixels as PIL, about 1.5x faster); CMYK JPEGs and every other format go through PIL.

EXIF orientation is *not* applied by default. Rotating a frame moves the colour filter array
phase and the JPEG 8x8 grid by a dihedral transform, and the challenge's data (and the
solutions that won it) read pixels in stored order; a model trained on stored order should see
stored order. `apply_exif_orientation=True` gives the upright view for display.

A truncated file is an error, never a half-grey image: simplejpeg runs in strict mode, and what
it rejects goes to PIL, which tolerates harmless libjpeg warnings (stray bytes before a marker)
but raises on truncation, unless `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` was set by someone else
(then a warning says so).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable

import numpy as np
import simplejpeg
from PIL import Image, ImageFile

PathOrBytes = str | os.PathLike | bytes | bytearray | memoryview

_JPEG_MAGIC = b"\xff\xd8\xff"
_EXIF_ORIENTATION = 0x0112
log = logging.getLogger(__name__)


class BadImageError(ValueError):
    """An image file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def read_bytes(path_or_bytes: PathOrBytes, name: str | None = None) -> tuple[bytes, str]:
    """The file's bytes and a name for messages."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(path_or_bytes), name or "<bytes>"
    path = os.fspath(path_or_bytes)
    try:
        with open(path, "rb") as f:
            return f.read(), name or path
    except OSError as e:
        raise BadImageError(name or path, f"cannot read file ({e.strerror or e})") from e


def is_jpeg(path_or_bytes: PathOrBytes) -> bool:
    """Whether the data starts with the JPEG SOI marker (what picks the 8 px crop grid)."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(path_or_bytes[:3]) == _JPEG_MAGIC
    with open(os.fspath(path_or_bytes), "rb") as f:
        return f.read(3) == _JPEG_MAGIC


def decode_image(
    path_or_bytes: PathOrBytes,
    *,
    name: str | None = None,
    min_size: int = 0,
    apply_exif_orientation: bool = False,
) -> np.ndarray:
    """Decodes to a uint8 [H, W, 3] RGB array.

    Grayscale is repeated to three channels, alpha dropped (not composited: the colour values
    are the trace), palettes expanded, CMYK converted by PIL, 16-bit samples cut to their high byte.
    Raises BadImageError for unreadable, truncated, non-image or too-small (`min_size` on
    either side) input.
    """
    data, name = read_bytes(path_or_bytes, name)
    if not data:
        raise BadImageError(name, "empty file (0 bytes)")
    image, turbo_error = None, None
    if data[:3] == _JPEG_MAGIC:
        try:
            image = _decode_turbo(data)
        except ValueError as e:  # maybe only a warning (stray bytes) that PIL tolerates
            turbo_error = e
    if image is None:
        try:
            image = _decode_pil(data, name)
        except BadImageError as e:
            if turbo_error is None:
                raise
            raise BadImageError(name, f"corrupt JPEG ({turbo_error})") from e
    if apply_exif_orientation:
        image = orient(image, exif_orientation(data))
    h, w = image.shape[:2]
    if min(h, w) < min_size:
        raise BadImageError(name, f"image is {h}x{w}, smaller than the required {min_size}x{min_size}")
    return image


def _decode_turbo(data: bytes) -> np.ndarray | None:
    """Strict libjpeg-turbo decode (ValueError on any libjpeg warning); None for what it should
    not handle (CMYK, unreadable headers), so that PIL decides."""
    try:
        _, _, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in ("RGB", "YCbCr", "Gray"):
        return None
    return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False, strict=True)


def _decode_pil(data: bytes, name: str) -> np.ndarray:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: truncated files may decode as grey")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return _to_rgb(im, name)
    except BadImageError:
        raise
    except Image.UnidentifiedImageError as e:
        raise BadImageError(name, "not an image file (unrecognised format)") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadImageError(name, f"cannot decode ({e})") from e


def _to_rgb(im: Image.Image, name: str) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit gray keeps its high byte, as PIL does for 16-bit RGB.
        x = (np.clip(np.asarray(im), 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(x[..., None], 3, axis=-1))
    if mode == "F":
        raise BadImageError(name, "floating-point images are not supported")
    if mode in ("L", "1", "LA", "La"):
        x = np.asarray(im.convert("L"))
        return np.ascontiguousarray(np.repeat(x[..., None], 3, axis=-1))
    if mode == "RGB":
        return np.asarray(im)
    return np.asarray(im.convert("RGB"))  # RGBA/RGBa (alpha dropped), P, PA, CMYK, YCbCr, LAB, HSV


def exif_orientation(data: bytes) -> int:
    """The EXIF Orientation tag (1..8), 1 when absent or unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, TypeError, KeyError):  # broken EXIF: as stored
        return 1
    return int(value) if value in range(1, 9) else 1


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """Applies an EXIF orientation to stored pixels (same result as PIL's exif_transpose)."""
    ops = {
        1: lambda x: x,
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1],
        5: lambda x: x.transpose(1, 0, 2),
        6: lambda x: np.rot90(x, -1),
        7: lambda x: x[::-1, ::-1].transpose(1, 0, 2),
        8: lambda x: np.rot90(x, 1),
    }
    return np.ascontiguousarray(ops[orientation](image))


# path -> (bytes, name): files on disk by default; `tfds_builder.BytesReader` for a TFDS build.
Reader = Callable[[str], tuple[bytes, str]]

# Paths found bad in this process -> reason: a bad file is decoded, and named, once.
BAD_FILES: dict[str, str] = {}


def load_frame(path: str, min_size: int, read: Reader = read_bytes) -> tuple[np.ndarray, bool]:
    """The decoded frame and whether its source is a JPEG (which picks the crop grid)."""
    data, name = read(path)
    return decode_image(data, name=name, min_size=min_size), is_jpeg(data)
