"""JPEG quality from the quantisation tables, estimated exactly as ImageMagick's `identify -format %Q`.

ImageMagick compares two numbers of the file's tables - a few telltale entries ('hash') and the
sum of every entry - with the same two numbers of libjpeg's standard (IJG) tables at each quality
1..100, strongest first, and takes the first quality the file's tables reach. Its lookup arrays
are these numbers, so they are computed here from the IJG tables rather than copied: on IJG
tables the answer is the encoder's quality, on other tables it is ImageMagick's answer, and the
winners' "quality > 93" rule cannot flip on a disagreement between two estimators.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# The example tables of the JPEG standard (Annex K) that libjpeg scales, in natural (row-major) order.
IJG_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
IJG_CHROMA = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
) + (99,) * 32  # fmt: skip


def ijg_table(base: Sequence[int], quality: int, force_baseline: bool = True) -> tuple[int, ...]:
    """libjpeg's table for `quality` (jpeg_quality_scaling, then rounding and clamping as jpeg_add_quant_table)."""
    quality = min(max(int(quality), 1), 100)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    top = 255 if force_baseline else 32767
    return tuple(min(max((v * scale + 50) // 100, 1), top) for v in base)


def _color_key(t0: Sequence[int], t1: Sequence[int]) -> int:
    return t0[2] + t0[53] + t1[0] + t1[63]


def _gray_key(t0: Sequence[int]) -> int:
    return t0[2] + t0[53]


_LUMA = [ijg_table(IJG_LUMA, q) for q in range(1, 101)]
_CHROMA = [ijg_table(IJG_CHROMA, q) for q in range(1, 101)]
# (hash, sum) per quality 1..100: colour files (two or more tables) and single-table files.
_COLOR_REF = [(_color_key(y, c), sum(y) + sum(c)) for y, c in zip(_LUMA, _CHROMA)]
_GRAY_REF = [(_gray_key(y), sum(y)) for y in _LUMA]


def estimate_quality(tables: Mapping[int, Sequence[int]]) -> int | None:
    """ImageMagick's quality estimate for quantisation tables keyed by table id, entries in natural order
    (as PIL's `JpegImageFile.quantization`). None where ImageMagick leaves it undefined (tables weaker
    than quality 50 that match no IJG quality exactly; `identify` then prints its default, 92)."""
    total = sum(sum(t) for t in tables.values())
    if 0 in tables and 1 in tables:
        key, refs = _color_key(tables[0], tables[1]), _COLOR_REF
    elif 0 in tables:
        key, refs = _gray_key(tables[0]), _GRAY_REF
    else:
        return None
    for quality, (ref_key, ref_total) in enumerate(refs, start=1):
        if key < ref_key and total < ref_total:
            continue
        exact = key <= ref_key and total <= ref_total
        return quality if exact or quality > 50 else None
    return None
