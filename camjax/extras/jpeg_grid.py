"""Where the 8x8 block grid of a once-JPEG-compressed image lies, read from its pixels.

A crop of a decoded JPEG keeps the encoder's block grid at an unknown offset. Re-cut into 8x8
blocks on that grid, the luma DCT coefficients are (up to the decoder's rounding) multiples of
the quantisation steps, so many sit at zero; cut on any other grid they spread out. Counting
near-zero AC coefficients over the 64 possible offsets therefore finds the grid without
knowing the tables - also at qualities above 95, where the pixels show no visible blocking.
"""

from __future__ import annotations

import numpy as np

BLOCK = 8


# JFIF's luma from RGB (ITU-R BT.601 full range; the inverse of its YCbCr -> RGB up to rounding)
LUMA = np.array([0.299, 0.587, 0.114])


def dct_matrix(n: int = BLOCK) -> np.ndarray:
    """The orthonormal DCT-II matrix (float64): JPEG's forward DCT is this on rows and columns.
    Also what `camjax.models.jpeg_trace` transforms patches with."""
    k, x = np.mgrid[:n, :n]
    d = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2 / n)
    d[0] /= np.sqrt(2)
    return d


_DCT = dct_matrix()


def luma(image: np.ndarray) -> np.ndarray:
    """JPEG's Y (ITU-R BT.601 full range) of an RGB image, or the image itself if grey."""
    image = np.asarray(image, np.float64)
    if image.ndim == 2:
        return image
    return image[..., :3] @ LUMA


def zero_fractions(image: np.ndarray, *, tolerance: float = 0.5) -> np.ndarray:
    """[8, 8]: for each (row, column) offset of the grid, the share of AC luma coefficients
    whose magnitude is below `tolerance`."""
    y = luma(image)
    h, w = y.shape
    if h < 2 * BLOCK or w < 2 * BLOCK:
        raise ValueError(f"a {h}x{w} image is too small to locate an 8x8 grid (needs at least 16x16)")
    ac = np.ones((BLOCK, BLOCK), bool)
    ac[0, 0] = False
    out = np.empty((BLOCK, BLOCK))
    for dy in range(BLOCK):
        nby = (h - dy) // BLOCK
        for dx in range(BLOCK):
            nbx = (w - dx) // BLOCK
            blocks = y[dy : dy + nby * BLOCK, dx : dx + nbx * BLOCK].reshape(nby, BLOCK, nbx, BLOCK)
            coefs = _DCT @ blocks.transpose(0, 2, 1, 3) @ _DCT.T
            out[dy, dx] = np.mean(np.abs(coefs[..., ac]) < tolerance)
    return out


def locate_grid(image: np.ndarray, *, max_side: int | None = 256) -> tuple[tuple[int, int], float]:
    """The encoder's grid in `image` and how far it stands out, from one pass over the offsets.

    The offset is (row, column) in 0..7 of the first full 8x8 block: 0, 0 for a crop that
    starts on the grid; 7, 0 for one cut a row below it. The confidence is the best offset's
    zero share minus the runner-up's, over the runner-up's (near 0 for an image that was never
    JPEG-compressed on a grid). Only the centre `max_side` (+7) pixels are read, from an
    offset that is a multiple of 8 (so the answer is the whole image's): a thousand blocks
    per offset already make the grid stand out, and a 512 px test patch costs a quarter of its
    blocks."""
    h, w = image.shape[:2]
    if max_side is not None:
        top, left = max(0, (h - max_side) // 2) // BLOCK * BLOCK, max(0, (w - max_side) // 2) // BLOCK * BLOCK
        image = image[top : top + max_side + BLOCK - 1, left : left + max_side + BLOCK - 1]
    scores = zero_fractions(image)
    dy, dx = np.unravel_index(int(np.argmax(scores)), scores.shape)
    ranked = np.sort(scores.ravel())
    return (int(dy), int(dx)), float((ranked[-1] - ranked[-2]) / max(ranked[-2], 1e-9))


def grid_offset(image: np.ndarray) -> tuple[int, int]:
    """The (row, column) offset of `locate_grid`."""
    return locate_grid(image)[0]
