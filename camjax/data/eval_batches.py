"""Validation and test batches: fixed crops and tiles on the grid, in fixed-size padded batches.

Validation cuts the same deterministic crops of every held-out file under each of the nine
manipulation states; test images larger than the patch are tiled on the 8 px grid. Batches
have static shapes: the last one is padded, and `mask` says which rows are real. A bad file
is skipped and listed in `skipped` when asked to, or raises naming the file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from camjax.cameras import MANIPULATIONS, is_manipulated_from_fname
from camjax.data import manipulations
from camjax.data.decode import BAD_FILES, BadImageError, Reader, load_frame, read_bytes
from camjax.data.grid import JPEG_GRID, crop_step, eval_origins, tile_origins
from camjax.data.sources import Record

log = logging.getLogger(__name__)


class _Batches:
    """A re-iterable stream of fixed-size batches; `skipped` lists (path, reason) of bad files."""

    def __init__(
        self, rows: Callable[[], Iterator[dict[str, Any]]], spec: dict, batch_size: int, read: Reader = read_bytes
    ):
        self._rows, self._spec, self._batch_size, self._read = rows, spec, batch_size, read
        self.skipped: list[tuple[str, str]] = []

    def _empty(self) -> dict[str, np.ndarray]:
        return {k: np.full((self._batch_size, *shape), fill, dtype) for k, (shape, dtype, fill) in self._spec.items()}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.skipped.clear()
        batch, n = self._empty(), 0
        for row in self._rows():
            for k, v in row.items():
                batch[k][n] = v
            batch["mask"][n] = 1.0
            n += 1
            if n == self._batch_size:
                yield batch
                batch, n = self._empty(), 0
        if n:
            yield batch

    def _decode(self, path: str, min_size: int, skip_bad: bool) -> tuple[np.ndarray, bool] | None:
        if not skip_bad:
            return load_frame(path, min_size, self._read)
        loaded = load_or_skip(path, min_size, self._read)
        if loaded is None:
            self.skipped.append((path, BAD_FILES[path]))
        return loaded


def load_or_skip(path: str, min_size: int, read: Reader = read_bytes) -> tuple[np.ndarray, bool] | None:
    """`load_frame`, or None for a bad file, which is logged once per process (and recorded in
    BAD_FILES with the reason) however often it is read."""
    try:
        return load_frame(path, min_size, read)
    except BadImageError as e:
        if path not in BAD_FILES:  # named once per process, counted on every pass
            BAD_FILES[path] = e.reason
            log.warning("skipping %s: %s", path, e.reason)
        return None


def manipulated_at(frame: np.ndarray, top: int, left: int, patch: int, manipulation) -> np.ndarray:
    """The `patch` at (top, left) under `manipulation`: its source crop is centred on the patch,
    moved inside the frame where it would leave it, and the frame mirrored where too small."""
    size = manipulations.source_size(patch, manipulation)
    h, w = frame.shape[:2]
    if h < size or w < size:
        frame = np.pad(frame, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), mode="symmetric")
        h, w = frame.shape[:2]
    off = (size - patch) // 2
    y = min(max(top - off, 0), h - size)
    x = min(max(left - off, 0), w - size)
    crop = frame[y : y + size, x : x + size]
    return manipulations.manipulate_patch(crop, patch, manipulation) if manipulation.kind != "none" else crop


def make_eval_batches(
    records: Sequence[Record], data_config, *, batch_size: int, skip_bad: bool = True, read: Reader = read_bytes
) -> _Batches:
    """Deterministic validation batches: `data_config.val_crops` grid-aligned crops per file,
    each under all 9 manipulations (ids 0..8), so one pass scores unaltered and manipulated.

    Fields: image, label, is_manipulated, manipulation, record_index, mask (0 = padding).
    A bad file raises BadImageError, or with `skip_bad` is logged and listed in `.skipped`.
    """
    p = int(data_config.patch)
    spec = dict(
        image=((p, p, 3), np.uint8, 0),
        label=((), np.int32, 0),
        is_manipulated=((), np.float32, 0),
        manipulation=((), np.int32, 0),
        record_index=((), np.int32, -1),
        mask=((), np.float32, 0),
    )

    def rows():
        for r, rec in enumerate(records):
            loaded = batches._decode(rec.path, p, skip_bad)
            if loaded is None:
                continue
            frame, jpeg = loaded
            h, w = frame.shape[:2]
            for top, left in eval_origins(h, w, p, crop_step(data_config.crop_step, jpeg), int(data_config.val_crops)):
                for m in MANIPULATIONS:
                    yield dict(
                        image=manipulated_at(frame, top, left, p, m),
                        label=rec.label,
                        is_manipulated=float(m.id != 0),
                        manipulation=m.id,
                        record_index=r,
                    )

    batches = _Batches(rows, spec, batch_size, read)
    return batches


def _tile_rows(f: int, frame: np.ndarray, flag: float, patch: int, max_tiles, phase=(0, 0)):
    """The tiles of one frame on the 8 px grid that starts at `phase` (row, column): the frame
    is cut there, and mirrored at the bottom/right edges where what is left is smaller than
    the patch (which keeps the grid phase)."""
    dy, dx = phase
    frame = frame[dy:, dx:]
    h, w = frame.shape[:2]
    if h < patch or w < patch:
        frame = np.pad(frame, ((0, max(0, patch - h)), (0, max(0, patch - w)), (0, 0)), mode="symmetric")
        h, w = frame.shape[:2]
    for top, left in tile_origins(h, w, patch, JPEG_GRID, max_tiles):
        yield dict(image=frame[top : top + patch, left : left + patch], is_manipulated=flag, file_index=f)


def _tile_spec(patch: int) -> dict:
    return dict(
        image=((patch, patch, 3), np.uint8, 0),
        is_manipulated=((), np.float32, 0),
        file_index=((), np.int32, -1),
        mask=((), np.float32, 0),
    )


def make_test_batches(
    test_paths: Sequence[str],
    *,
    patch: int,
    batch_size: int,
    max_tiles: int | None = None,
    pad: bool = False,
    skip_bad: bool = False,
    read: Reader = read_bytes,
    phase: Callable[[str, np.ndarray, bool], tuple[int, int]] | None = None,
    manipulated: Sequence[bool] | None = None,
) -> _Batches:
    """Streams the test images as batches of tiles (fields image, is_manipulated, file_index,
    mask). Tiles sit on the 8 px grid, which starts at the top-left corner unless `phase`
    (path, frame, is_jpeg) -> (row, column) places it. An image smaller than the patch is an
    error unless `pad` (mirrored at the bottom/right edges, keeping the grid phase); a bad
    file is an error unless `skip_bad` (then listed in `.skipped`). Each tile's manipulation
    flag is its file's entry of `manipulated` when given, else what the file's name says (the
    challenge's `_manip` / `_unalt`; unaltered when it says neither)."""

    def rows():
        for f, path in enumerate(test_paths):
            loaded = batches._decode(path, 0, skip_bad)
            if loaded is None:
                continue
            frame, jpeg = loaded
            h, w = frame.shape[:2]
            if (h < patch or w < patch) and not pad:
                raise BadImageError(path, f"image is {h}x{w}, smaller than the {patch}x{patch} patch (pass pad=True)")
            if manipulated is None:
                flag = float(bool(is_manipulated_from_fname(path.replace("\\", "/").rsplit("/", 1)[-1])))
            else:
                flag = float(bool(manipulated[f]))
            yield from _tile_rows(f, frame, flag, patch, max_tiles, phase(path, frame, jpeg) if phase else (0, 0))

    batches = _Batches(rows, _tile_spec(patch), batch_size, read)
    return batches


def make_image_batches(
    images: Sequence[np.ndarray], flags: Sequence[float], *, patch: int, batch_size: int, max_tiles: int | None = None
) -> _Batches:
    """`make_test_batches` for images already in memory (e.g. test-like validation samples),
    each with its is_manipulated flag."""

    def rows():
        for f, (image, flag) in enumerate(zip(images, flags)):
            yield from _tile_rows(f, image, float(flag), patch, max_tiles)

    return _Batches(rows, _tile_spec(patch), batch_size)
