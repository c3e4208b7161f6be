"""The challenge manipulations, grid crops and D4 views as batched, jittable JAX functions.

The host versions in `camjax.data.manipulations` (OpenCV bicubic resize, Pillow/libjpeg JPEG,
gamma table) stay the reference; these redo their arithmetic step by step with static shapes, so a
train step can manipulate its batch on the accelerator and the host only ships raw crops:
- resize: cv2.resize's INTER_CUBIC (a = -0.75, half-pixel centres, replicated border) as static
  4-tap gather tables built with numpy, summed in float32 and rounded as Intel IPP does;
- JPEG: libjpeg's pipeline at Pillow's settings - JFIF YCbCr in 16-bit fixed point, 4:2:0 with
  libjpeg's biased 2x2 average, the 'islow' integer DCT and IDCT, IJG tables scaled by quality,
  round-half-up quantisation, 'fancy' triangle up-sampling;
- gamma: the host's own 256-entry table.

`manipulate` turns raw crops of side `raw_size(patch)` into `patch`-sized results, each by its
own manipulation id (`camjax.cameras.MANIPULATIONS`), and `apply_on_device` adds the D4 view
(`camjax.tta`'s encoding): the function a train step calls on a batch the host cut.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from camjax.cameras import MANIPULATIONS, NUM_MANIPULATIONS, Manipulation
from camjax.data import manipulations
from camjax.tta import transform_batch

STRATEGIES = ("auto", "tables", "map")


def _check_batch(images: jax.Array, what: str, square: bool = True) -> None:
    if images.ndim != 4 or images.shape[-1] != 3 or (square and images.shape[1] != images.shape[2]):
        kind = "square " if square else ""
        raise ValueError(f"device_ops.{what}: expected a {kind}[B, H, W, 3] batch, got shape {images.shape}")


def raw_size(patch: int) -> int:
    """Side of the raw crop `manipulate` takes: the largest source any manipulation needs."""
    return manipulations.max_source_size(patch)


# --- bicubic resize (cv2.resize INTER_CUBIC on uint8) --------------------------------------


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.75 (OpenCV's), in float64."""
    a, x = -0.75, np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _resize_taps(patch: int, m: Manipulation, raw: int) -> tuple[np.ndarray, np.ndarray]:
    """Taps of the centre-cropped resize of a `raw` crop's centre source, along one axis.

    Returns indices into the raw crop and float32 weights, both [patch, 4]: output i is
    sum_k weight[i, k] * raw[index[i, k]], for the resize of the centre `source_size` region
    with half-pixel centres and that region's edge pixels replicated, as cv2.resize does it.
    """
    src = manipulations.source_size(patch, m)
    out = round(src * m.value)  # the side manipulations.resize gives (round half to even)
    if out < patch:
        raise ValueError(f"device_ops: resizing {src} px by {m.value} gives {out} < patch {patch}")
    start = (out - patch) // 2
    fx = (np.arange(start, start + patch) + 0.5) * (src / out) - 0.5  # the scale is dsize / ssize
    sx = np.floor(fx)
    weights = _cubic((fx - sx)[:, None] - np.arange(-1, 3))
    taps = np.clip(sx.astype(np.int64)[:, None] + np.arange(-1, 3), 0, src - 1)
    return (taps + (raw - src) // 2).astype(np.int32), weights.astype(np.float32)


def _identity_taps(patch: int, raw: int) -> tuple[np.ndarray, np.ndarray]:
    """Taps that copy the centre `patch` of a `raw` crop (exactly: weights 0, 1, 0, 0)."""
    taps = np.repeat(np.arange(patch)[:, None] + (raw - patch) // 2, 4, axis=1)
    weights = np.zeros((patch, 4), np.float32)
    weights[:, 1] = 1
    return taps.astype(np.int32), weights


@functools.cache
def _tap_tables(patch: int, raw: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-manipulation taps [NUM_MANIPULATIONS, patch, 4]: resizes resample, the rest copy."""
    pairs = [_resize_taps(patch, m, raw) if m.kind == "resize" else _identity_taps(patch, raw) for m in MANIPULATIONS]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _resample_rows(x: jax.Array, taps: jax.Array, weights: jax.Array) -> jax.Array:
    """[B, C, N, M] -> [B, C, P, M]: rows gathered whole by per-example taps [B, P, 4], weighted.

    One gather per tap, each fused with its multiply-add (4x faster on CPU than one gather of
    all taps and a sum over them)."""
    out = 0.0
    for k in range(4):
        rows = jax.vmap(lambda image, t: jnp.take(image, t, axis=1, mode="clip"))(x, taps[:, :, k])
        out = out + rows * weights[:, None, :, k, None]
    return out


def _resample(images: jax.Array, taps: jax.Array, weights: jax.Array) -> jax.Array:
    """Separable 4-tap resampling with per-example taps/weights [B, P, 4] (the same for rows
    and columns): uint8 [B, S, S, C] -> uint8 [B, P, P, C].

    float32, columns first, rounded half to even: what cv2.resize computes through Intel IPP
    (on by default in the opencv-python wheels); OpenCV's own 11-bit fixed-point code, used
    where IPP is off, differs by 1 on up to a few per cent of the pixels. Planes are resampled
    in [B, C, ., .] layout, so every gathered row is contiguous (5-10x faster on CPU).
    """
    x = _resample_rows(images.astype(jnp.float32).transpose(0, 3, 2, 1), taps, weights)  # [B, C, P, S]: columns
    x = _resample_rows(x.swapaxes(2, 3), taps, weights)  # [B, C, P, P]: then rows
    return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8).transpose(0, 2, 3, 1)


def resize(sources: jax.Array, scale: float, *, patch: int) -> jax.Array:
    """`manipulations.manipulate_patch` for a resize by `scale` (static), on a batch.

    `sources` [B, S, S, 3] uint8 with S >= source_size: the centre source is resized and the
    result centre-cropped to [B, patch, patch, 3].
    """
    _check_batch(sources, "resize")
    m, raw = Manipulation(f"resize{scale}", "resize", scale), sources.shape[1]
    if raw < manipulations.source_size(patch, m):
        raise ValueError(
            f"device_ops.resize: a x{scale} patch of {patch} needs sources of "
            f"{manipulations.source_size(patch, m)} px, got {raw}"
        )
    taps, weights = _resize_taps(patch, m, raw)
    b = sources.shape[0]
    return _resample(sources, jnp.broadcast_to(taps, (b, patch, 4)), jnp.broadcast_to(weights, (b, patch, 4)))


# --- gamma -------------------------------------------------------------------------------


def gamma(images: jax.Array, value: float) -> jax.Array:
    """`manipulations.gamma_correct` (the same uint8 table) on any uint8 array."""
    return jnp.asarray(manipulations.gamma_table(value))[images]


# --- JPEG (libjpeg, as Pillow encodes and decodes) ----------------------------------------

# IJG (JPEG spec Annex K) base tables, natural (row-major) order.
_LUMA_TABLE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
])  # fmt: skip
_CHROMA_TABLE = np.full((8, 8), 99)
_CHROMA_TABLE[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]


def quant_tables(quality: int) -> np.ndarray:
    """[2, 8, 8] luma and chroma tables at `quality`, scaled as libjpeg's jpeg_set_quality
    with force_baseline (Pillow's call)."""
    q = int(quality)
    if not 1 <= q <= 100:
        raise ValueError(f"device_ops.quant_tables: JPEG quality must be in 1..100, got {quality!r}")
    scale = 5000 // q if q < 50 else 200 - 2 * q
    base = np.stack([_LUMA_TABLE.reshape(8, 8), _CHROMA_TABLE])
    return np.clip((base * scale + 50) // 100, 1, 255).astype(np.int32)


_SCALEBITS = 16  # libjpeg's colour conversion fixed point


def _fix16(x: float) -> int:
    return int(x * (1 << _SCALEBITS) + 0.5)


def _fix13(x: float) -> int:
    return int(x * (1 << 13) + 0.5)


_CONST_BITS, _PASS1_BITS = 13, 2  # libjpeg's islow DCT fixed point
_C0298, _C0390, _C0541, _C0765 = _fix13(0.298631336), _fix13(0.390180644), _fix13(0.541196100), _fix13(0.765366865)
_C0899, _C1175, _C1501, _C1847 = _fix13(0.899976223), _fix13(1.175875602), _fix13(1.501321110), _fix13(1.847759065)
_C1961, _C2053, _C2562, _C3072 = _fix13(1.961570560), _fix13(2.053119869), _fix13(2.562915447), _fix13(3.072711026)


def _descale(x: jax.Array, n: int) -> jax.Array:
    return (x + (1 << (n - 1))) >> n


def _odd_rotations(t4, t5, t6, t7):
    """The odd part shared by libjpeg's islow forward and inverse DCTs."""
    z5 = (t4 + t5 + t6 + t7) * _C1175
    z1 = (t4 + t7) * -_C0899
    z2 = (t5 + t6) * -_C2562
    z3 = (t4 + t6) * -_C1961 + z5
    z4 = (t5 + t7) * -_C0390 + z5
    return t4 * _C0298 + z1 + z3, t5 * _C2053 + z2 + z4, t6 * _C3072 + z2 + z3, t7 * _C1501 + z1 + z4


def _fdct_1d(d: list[jax.Array], first: bool) -> list[jax.Array]:
    """One pass of jfdctint (first: the row pass, outputs scaled up by 2**PASS1_BITS)."""
    t0, t7 = d[0] + d[7], d[0] - d[7]
    t1, t6 = d[1] + d[6], d[1] - d[6]
    t2, t5 = d[2] + d[5], d[2] - d[5]
    t3, t4 = d[3] + d[4], d[3] - d[4]
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    if first:
        out0, out4, shift = (t10 + t11) << _PASS1_BITS, (t10 - t11) << _PASS1_BITS, _CONST_BITS - _PASS1_BITS
    else:
        out0, out4 = _descale(t10 + t11, _PASS1_BITS), _descale(t10 - t11, _PASS1_BITS)
        shift = _CONST_BITS + _PASS1_BITS
    z1 = (t12 + t13) * _C0541
    out2 = _descale(z1 + t13 * _C0765, shift)
    out6 = _descale(z1 - t12 * _C1847, shift)
    o7, o5, o3, o1 = _odd_rotations(t4, t5, t6, t7)
    return [out0, _descale(o1, shift), out2, _descale(o3, shift), out4, _descale(o5, shift), out6, _descale(o7, shift)]


def _idct_1d(c: list[jax.Array], first: bool) -> list[jax.Array]:
    """One pass of jidctint (first: the column pass; the second adds the final rounding up front)."""
    z1 = (c[2] + c[6]) * _C0541
    t2, t3 = z1 - c[6] * _C1847, z1 + c[2] * _C0765
    dc = c[0] if first else c[0] + (1 << (_PASS1_BITS + 2))
    t0, t1 = (dc + c[4]) << _CONST_BITS, (dc - c[4]) << _CONST_BITS
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    o7, o5, o3, o1 = _odd_rotations(c[7], c[5], c[3], c[1])
    out = [t10 + o1, t11 + o3, t12 + o5, t13 + o7, t13 - o7, t12 - o5, t11 - o3, t10 - o1]
    if first:
        return [_descale(v, _CONST_BITS - _PASS1_BITS) for v in out]
    return [v >> (_CONST_BITS + _PASS1_BITS + 3) for v in out]


def _along(fn, x: jax.Array, axis: int, first: bool) -> jax.Array:
    parts = [lax.index_in_dim(x, i, axis, keepdims=False) for i in range(8)]
    return jnp.stack(fn(parts, first), axis=axis)


def _to_blocks(plane: jax.Array) -> jax.Array:
    """[B, H, W] (multiples of 8) -> [B, H/8 * W/8, 8, 8]."""
    b, h, w = plane.shape
    return plane.reshape(b, h // 8, 8, w // 8, 8).transpose(0, 1, 3, 2, 4).reshape(b, -1, 8, 8)


def _from_blocks(blocks: jax.Array, h: int, w: int) -> jax.Array:
    b = blocks.shape[0]
    return blocks.reshape(b, h // 8, w // 8, 8, 8).transpose(0, 1, 3, 2, 4).reshape(b, h, w)


def _jpeg_blocks(blocks: jax.Array, tables: jax.Array) -> jax.Array:
    """Encode and decode 8x8 blocks of samples [B, N, 8, 8] with quantisation tables of the same
    shape: DCT, round-half-up quantisation by 8 * table, dequantisation, IDCT."""
    coef = _along(_fdct_1d, _along(_fdct_1d, blocks - 128, -1, True), -2, False)  # rows, then columns
    divisor = tables << 3
    q = (jnp.abs(coef) + (divisor >> 1)) // divisor
    dequant = jnp.where(coef < 0, -q, q) * tables
    pixels = _along(_idct_1d, _along(_idct_1d, dequant, -2, True), -1, False)  # columns, then rows
    return jnp.clip(pixels + 128, 0, 255)


def _downsample(c: jax.Array) -> jax.Array:
    """libjpeg's h2v2 down-sampling: a 2x2 sum with a bias alternating 1, 2 along each row."""
    b, h, w = c.shape
    s = c.reshape(b, h // 2, 2, w // 2, 2).sum(axis=(2, 4))
    bias = 1 + (jnp.arange(w // 2) % 2)
    return (s + bias) >> 2


def _fancy_upsample(c: jax.Array, height: int, width: int) -> jax.Array:
    """libjpeg's h2v2 'fancy' up-sampling: a triangle filter (weights 9, 3, 3, 1 / 16) with
    edge replication and alternating rounding biases 8, 7, cropped to height x width."""

    def neighbours(x, axis):
        n = x.shape[axis]
        before = jnp.concatenate([lax.slice_in_dim(x, 0, 1, axis=axis), lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis)
        after = jnp.concatenate([lax.slice_in_dim(x, 1, n, axis=axis), lax.slice_in_dim(x, n - 1, n, axis=axis)], axis)
        return before, after

    above, below = neighbours(c, 1)
    rows = jnp.stack([3 * c + above, 3 * c + below], axis=2).reshape(c.shape[0], -1, c.shape[2])
    left, right = neighbours(rows, 2)
    out = jnp.stack([(3 * rows + left + 8) >> 4, (3 * rows + right + 7) >> 4], axis=3)
    out = out.reshape(rows.shape[0], rows.shape[1], -1)
    return out[:, :height, :width]


def _pad_rows(plane: jax.Array, multiple: int) -> jax.Array:
    return jnp.pad(plane, ((0, 0), (0, -plane.shape[1] % multiple), (0, 0)), mode="edge")


def _jpeg(images: jax.Array, tables: jax.Array) -> jax.Array:
    """JPEG encode+decode of uint8 [B, H, W, 3] with per-example tables [B, 2, 8, 8].

    Padding as libjpeg's: edge pixels replicated to whole MCUs across and to an even height,
    then each component's last row replicated down to whole blocks.
    """
    h, w = images.shape[1:3]
    x = jnp.pad(images, ((0, 0), (0, h % 2), (0, -w % 16), (0, 0)), mode="edge").astype(jnp.int32)
    r, g, bl = x[..., 0], x[..., 1], x[..., 2]
    half, offset = 1 << (_SCALEBITS - 1), 128 << _SCALEBITS
    y = (_fix16(0.299) * r + _fix16(0.587) * g + _fix16(0.114) * bl + half) >> _SCALEBITS
    cb = (-_fix16(0.16874) * r - _fix16(0.33126) * g + _fix16(0.5) * bl + offset + half - 1) >> _SCALEBITS
    cr = (_fix16(0.5) * r - _fix16(0.41869) * g - _fix16(0.08131) * bl + offset + half - 1) >> _SCALEBITS
    # All blocks of the three components go through one DCT graph (a third of the compile time).
    planes = [_pad_rows(y, 8), _pad_rows(_downsample(cb), 8), _pad_rows(_downsample(cr), 8)]
    counts = [p.shape[1] * p.shape[2] // 64 for p in planes]
    which = np.repeat([0, 1, 1], counts)  # luma table for Y blocks, chroma for Cb and Cr
    out = _jpeg_blocks(jnp.concatenate([_to_blocks(p) for p in planes], axis=1), tables[:, which])
    parts = jnp.split(out, np.cumsum(counts)[:2], axis=1)
    y, cb, cr = (_from_blocks(o, *p.shape[1:]) for o, p in zip(parts, planes))
    ch, cw = -(-h // 2), -(-w // 2)  # the decoder up-samples from the chroma samples in the image
    y, cb, cr = y[:, :h, :w], cb[:, :ch, :cw], cr[:, :ch, :cw]
    cb, cr = jnp.split(_fancy_upsample(jnp.concatenate([cb, cr]), h, w) - 128, 2)
    r = y + ((_fix16(1.402) * cr + half) >> _SCALEBITS)
    g = y + ((-_fix16(0.34414) * cb - _fix16(0.71414) * cr + half) >> _SCALEBITS)
    bl = y + ((_fix16(1.772) * cb + half) >> _SCALEBITS)
    return jnp.clip(jnp.stack([r, g, bl], axis=-1), 0, 255).astype(jnp.uint8)


def jpeg(images: jax.Array, quality: int) -> jax.Array:
    """`manipulations.jpeg_compress` at a static `quality` on uint8 [B, H, W, 3]."""
    _check_batch(images, "jpeg", square=False)
    tables = jnp.broadcast_to(jnp.asarray(quant_tables(quality)), (images.shape[0], 2, 8, 8))
    return _jpeg(images, tables)


# --- per-example manipulation ------------------------------------------------------------


@functools.cache
def _manipulation_tables() -> tuple[np.ndarray, np.ndarray]:
    """Gamma tables [M, 256] (identity for other ids) and JPEG tables [M, 2, 8, 8] (quality
    100's all-ones for other ids; their JPEG result is discarded)."""
    luts = np.stack(
        [
            manipulations.gamma_table(m.value) if m.kind == "gamma" else np.arange(256, dtype=np.uint8)
            for m in MANIPULATIONS
        ]
    )
    quant = np.stack([quant_tables(m.value if m.kind == "jpeg" else 100) for m in MANIPULATIONS])
    return luts, quant


def _centre(x: jax.Array, patch: int) -> jax.Array:
    off = (x.shape[1] - patch) // 2
    return x[:, off : off + patch, off : off + patch]


# kind -> (sources [1, S, S, 3], value, patch) -> [1, patch, patch, 3]: the jitted twin of
# `manipulations.KINDS[kind].host` (the 'map' strategy runs one per example). The 'tables'
# strategy fuses the kinds in TABLE_KINDS into three batch-wide stages instead.
DEVICE_KINDS: dict[str, Callable[[jax.Array, float, int], jax.Array]] = {
    "none": lambda x, value, patch: _centre(x, patch),
    "resize": lambda x, scale, patch: resize(x, scale, patch=patch),
    "gamma": lambda x, g, patch: gamma(_centre(x, patch), g),
    "jpeg": lambda x, quality, patch: jpeg(_centre(x, patch), int(quality)),
}
TABLE_KINDS = frozenset({"none", "resize", "gamma", "jpeg"})


def _branch(m: Manipulation, patch: int):
    """One image [S, S, 3] -> [patch, patch, 3] under manipulation m (the 'map' strategy)."""
    if m.kind not in DEVICE_KINDS:
        raise ValueError(f"manipulation kind {m.kind!r} ({m.name}) has no device version in DEVICE_KINDS")
    fn = DEVICE_KINDS[m.kind]
    return lambda image: fn(image[None], m.value, patch)[0]


def manipulate(raw: jax.Array, manip_ids: jax.Array, *, patch: int, strategy: str = "auto") -> jax.Array:
    """Per-example challenge manipulations: raw crops uint8 [B, R, R, 3] (R = raw_size(patch))
    and ids [B] (0 = none, else the index into MANIPULATIONS) -> uint8 [B, patch, patch, 3].

    Example b is `manipulations.manipulate_patch(raw[b], patch, MANIPULATIONS[id])`: the
    manipulation's source is the centre of the raw crop, the unaltered patch its centre crop.
    Strategies (same results): 'tables' runs one resampling (identity taps for non-resize ids),
    one gamma lookup and one JPEG pass over the batch with per-example tables, whatever the mix
    of ids; 'map' is a `lax.switch` per example in a `lax.map` loop (one branch each, serially).
    'auto' is 'map' on CPU, where it measured 5-10x faster than 'tables' (benchmarks/device_ops.py),
    and 'tables' on accelerators, which want few wide kernels. Ids out of 0..8 are clamped.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"device_ops.manipulate: strategy must be one of {STRATEGIES}, got {strategy!r}")
    tables_fit = all(m.kind in TABLE_KINDS for m in MANIPULATIONS)
    if strategy == "auto":
        strategy = "map" if jax.default_backend() == "cpu" or not tables_fit else "tables"
    if strategy == "tables" and not tables_fit:
        raise ValueError(
            f"device_ops.manipulate: strategy 'tables' covers the kinds {sorted(TABLE_KINDS)} only; use 'map'"
        )
    _check_batch(raw, "manipulate")
    if raw.dtype != jnp.uint8:
        raise ValueError(f"device_ops.manipulate: raw crops must be uint8, got {raw.dtype}")
    if raw.shape[1] != raw_size(patch):
        raise ValueError(
            f"device_ops.manipulate: patch {patch} needs raw crops of {raw_size(patch)} px, got {raw.shape[1]}"
        )
    ids = jnp.clip(jnp.asarray(manip_ids, jnp.int32), 0, NUM_MANIPULATIONS - 1)
    if ids.shape != raw.shape[:1]:
        raise ValueError(f"device_ops.manipulate: manip_ids must be [{raw.shape[0]}], got shape {ids.shape}")
    if strategy == "tables":
        taps, weights = _tap_tables(patch, raw.shape[1])
        # Each stage is materialised (optimization_barrier): fused into its readers, XLA:CPU
        # recomputed the gathers and ran 4-5x slower.
        x = lax.optimization_barrier(_resample(raw, jnp.asarray(taps)[ids], jnp.asarray(weights)[ids]))
        luts, quant = _manipulation_tables()
        lut_index = ids[:, None, None, None] * 256 + x.astype(jnp.int32)
        x = lax.optimization_barrier(jnp.asarray(luts.reshape(-1))[lut_index])
        is_jpeg = jnp.asarray([m.kind == "jpeg" for m in MANIPULATIONS])[ids]
        return jnp.where(is_jpeg[:, None, None, None], _jpeg(x, jnp.asarray(quant)[ids]), x)
    branches = [_branch(m, patch) for m in MANIPULATIONS]
    return lax.map(lambda args: lax.switch(args[1], branches, args[0]), (raw, ids))


def apply_on_device(
    raw_crops: jax.Array, manip_ids: jax.Array, d4_ids: jax.Array, *, patch: int, strategy: str = "auto"
) -> jax.Array:
    """The train step's augmentation: `manipulate`, then the D4 view d4_ids[b] (0..7, camjax.tta's
    k = rotation + 4 * flip) of each example -> uint8 [B, patch, patch, 3]."""
    return transform_batch(manipulate(raw_crops, manip_ids, patch=patch, strategy=strategy), d4_ids)
