"""The JPEG grid locator on crops of real JPEG encodes: every offset, every quality family."""

import io

import numpy as np
import pytest
from PIL import Image

from camjax.extras import jpeg_grid


def _jpeg_frame(quality, subsampling, seed=0, size=600):
    """A textured, noisy frame through Pillow's libjpeg, decoded back."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    base = 128 + 60 * np.sin(x / 23.0) * np.cos(y / 31.0) + rng.normal(0, 6, (size, size))
    rgb = np.stack([base, base * 0.9 + 10, base * 0.8 + 20], -1) + rng.normal(0, 3, (size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality, subsampling=subsampling)
    return np.asarray(Image.open(buf).convert("RGB"))


@pytest.mark.parametrize("quality,subsampling", [(75, 2), (90, 2), (97, 1), (98, 0)])
def test_finds_the_grid_of_any_crop(quality, subsampling):
    frame = _jpeg_frame(quality, subsampling)
    for top, left in [(0, 0), (1, 0), (0, 5), (3, 7), (8, 16), (13, 2)]:
        crop = frame[top : top + 256, left : left + 256]
        offset, confidence = jpeg_grid.locate_grid(crop)
        assert offset == (-top % 8, -left % 8), (quality, top, left)
        assert confidence > 0.3


def test_no_grid_without_compression():
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (256, 256, 3)).astype(np.uint8)
    assert jpeg_grid.locate_grid(noise)[1] < 0.1


def test_too_small_is_a_clear_error():
    with pytest.raises(ValueError, match="too small"):
        jpeg_grid.grid_offset(np.zeros((10, 40, 3), np.uint8))
