"""The grids patches are cut on, and the deterministic crop positions built on them.

Crops of JPEG sources move in steps of 8 px (the DCT block) and of other sources in steps of
2 px (the Bayer period), so every patch keeps its traces' phase; validation crops and test
tiles are placed on the same grids, evenly and deterministically. `d4_host` is the host twin
of `camjax.tta.transform`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

JPEG_GRID = 8  # the DCT block: crops of JPEG sources move in steps of 8 px
CFA_GRID = 2  # the Bayer period: crops of other sources move in steps of 2 px
# Where test tiles start (config.eval.grid, evaluate --grid): at the image's top-left corner,
# or on the JPEG block grid its pixels show (`camjax.evaluator.GridPhases`; a crop cut off the
# encoder's grid, such as a 1-row-off centre crop, is then still read on it).
TEST_GRIDS = ("corner", "found")


def crop_step(override: int, jpeg: bool) -> int:
    """The crop grid: `override` (data.crop_step) when set, else by the source's format."""
    return int(override) or (JPEG_GRID if jpeg else CFA_GRID)


def d4_host(image: np.ndarray, k: int) -> np.ndarray:
    """D4 element k on one HxWxC image, in camjax.tta's encoding: k // 4 horizontal flips,
    then k % 4 counter-clockwise quarter turns."""
    if k >= 4:
        image = image[:, ::-1]
    return np.ascontiguousarray(np.rot90(image, k % 4, axes=(0, 1)))


def eval_origins(height: int, width: int, patch: int, step: int, count: int) -> list[tuple[int, int]]:
    """`count` patch corners on the grid: the centre first, then an even tiling of the frame."""

    def snap(v):
        return int(v) // step * step

    origins = [(snap((height - patch) / 2), snap((width - patch) / 2))]
    if count > 1:
        g = math.ceil(math.sqrt(count - 1))
        ys = [snap(v) for v in np.linspace(0, height - patch, g)]
        xs = [snap(v) for v in np.linspace(0, width - patch, g)]
        origins += [(y, x) for y in ys for x in xs][: count - 1]
    return origins


def tile_origins(height: int, width: int, patch: int, step: int = JPEG_GRID, max_tiles: int | None = None):
    """Corners of the tiles that cover a frame: ceil(side / patch) per axis, evenly spread and
    snapped down to the grid; `max_tiles` keeps an evenly spaced subset."""

    def axis(side):
        n = math.ceil(side / patch)
        return sorted({int(v) // step * step for v in np.linspace(0, side - patch, n)})

    return evenly_spaced([(y, x) for y in axis(height) for x in axis(width)], max_tiles)


def evenly_spaced(items: Sequence, limit: int | None) -> list:
    """At most `limit` items spread evenly over `items`, first and last included (all when
    `limit` is 0 or None)."""
    if not limit or len(items) <= limit:
        return list(items)
    return [items[i] for i in np.unique(np.round(np.linspace(0, len(items) - 1, limit)).astype(int))]
