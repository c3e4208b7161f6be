"""Layers shared by every backbone: preprocessing, high-pass residuals, space-to-depth, the CPU
convolution lowerings (depthwise as shifted slices, dense as products of gathered taps or of
every tap's kernel, kernel gradients in runs of the batch and bands of rows), and `Layers`,
the one factory every family builds its convolutions with."""

from __future__ import annotations

import dataclasses
import functools
import typing

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.custom_derivatives import SymbolicZero

_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)


def preprocess(images: jax.Array, mode: str) -> jax.Array:
    """keras.applications' `preprocess_input` for pixel values in [0, 255] (uint8 or float)."""
    x = images.astype(jnp.float32)
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "torch":
        return (x / 255.0 - _TORCH_MEAN) / _TORCH_STD
    if mode == "caffe":
        return x[..., ::-1] - _CAFFE_MEAN_BGR
    raise ValueError(f"unknown preprocess mode {mode!r}; expected 'tf', 'torch' or 'caffe'")


def pixels_of(x: jax.Array, mode: str) -> jax.Array:
    """The inverse of `preprocess`: RGB pixel values in [0, 255] (float32) again, for the parts
    of a model that read pixel values themselves (the JPEG trace)."""
    x = x.astype(jnp.float32)
    if mode == "tf":
        return (x + 1.0) * 127.5
    if mode == "torch":
        return (x * _TORCH_STD + _TORCH_MEAN) * 255.0
    if mode == "caffe":
        return (x + _CAFFE_MEAN_BGR)[..., ::-1]
    raise ValueError(f"unknown preprocess mode {mode!r}; expected 'tf', 'torch' or 'caffe'")


def gray_level(mode: str) -> np.ndarray:
    """One 8-bit grey level in `preprocess(mode)` units, per channel (in the channel order
    `preprocess` returns): the unit a residual clip is stated in whatever the backbone's scaling."""
    if mode == "tf":
        return np.full(3, 1 / 127.5, np.float32)
    if mode == "torch":
        return (1 / (255.0 * _TORCH_STD)).astype(np.float32)
    if mode == "caffe":
        return np.ones(3, np.float32)
    raise ValueError(f"unknown preprocess mode {mode!r}; expected 'tf', 'torch' or 'caffe'")


# The 5x5 "KV" high-pass kernel of the challenge's starter code (Fridrich/Kodovsky SRM).
KV_KERNEL = (
    np.array(
        [
            [-1, 2, -2, 2, -1],
            [2, -6, 8, -6, 2],
            [-2, 8, -12, 8, -2],
            [2, -6, 8, -6, 2],
            [-1, 2, -2, 2, -1],
        ],
        np.float32,
    )
    / 12.0
)


def shifted_depthwise(x: jax.Array, kernel: jax.Array, strides=(1, 1), padding="SAME") -> jax.Array:
    """A depthwise convolution (NHWC, HWIO kernel of shape (kh, kw, 1, C * multiplier)) as
    kh * kw strided slices multiplied and summed.

    XLA:CPU lowers a grouped convolution with one channel per group to a slow generic loop;
    these elementwise products fuse into one pass (benchmarks/RESULTS.md, "Depthwise").
    """
    kh, kw, _, cout = kernel.shape
    c = x.shape[-1]
    if cout != c:  # depth multiplier m: output channel c * m + j reads input channel c
        x = jnp.repeat(x, cout // c, axis=-1)
    x = jnp.pad(x, ((0, 0), *_explicit_pads(x.shape, kernel.shape, strides, padding), (0, 0)))
    return _taps_conv(x, kernel.reshape(kh, kw, cout), tuple(strides))


def _out_size(size: int, k: int, stride: int) -> int:
    return (size - k) // stride + 1


def _tap(xp: jax.Array, i: int, j: int, out_hw: tuple[int, int], strides: tuple[int, int]) -> jax.Array:
    """The input values kernel tap (i, j) meets at every output position: a strided slice."""
    (oh, ow), (sh, sw) = out_hw, strides
    n, _, _, c = xp.shape
    return jax.lax.slice(xp, (0, i, j, 0), (n, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c), (1, sh, sw, 1))


def _valid_taps(xp: jax.Array, kernel: jax.Array, strides: tuple[int, int]) -> jax.Array:
    """'VALID' depthwise convolution of a padded input with a (kh, kw, C) kernel."""
    kh, kw, c = kernel.shape
    n, hp, wp, _ = xp.shape
    out_hw = (_out_size(hp, kh, strides[0]), _out_size(wp, kw, strides[1]))
    if min(out_hw) < 1:  # as lax.conv: an empty map, which the classifier reports by name
        return jnp.zeros((n, *(max(s, 0) for s in out_hw), c), jnp.result_type(xp, kernel))
    out = None
    for i in range(kh):
        for j in range(kw):
            term = _tap(xp, i, j, out_hw, strides) * kernel[i, j]
            out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _taps_conv(xp: jax.Array, kernel: jax.Array, strides: tuple[int, int]) -> jax.Array:
    """`_valid_taps` with the gradient of `_taps_conv_bwd`."""
    return _valid_taps(xp, kernel, strides)


def _taps_conv_fwd(xp, kernel, strides):
    return _valid_taps(xp, kernel, strides), (xp, kernel)


def _taps_conv_bwd(strides, residuals, g):
    """Both gradients in passes XLA:CPU runs fast (RESULTS, "The depthwise gradient from
    slices"):
    - the kernel's: each tap's slice of the input times g, each product's rows folded onto an
      eighth of them (`_fold_rows`) in one fused pass, then one reduction for all taps;
    - the input's: the 'full' correlation of g with the flipped kernel, i.e. the forward's
      shifted slices over g dilated by the strides and padded by kernel size - 1 once, which
      XLA fuses into one pass.
    Placing g on the padded input grid once per tap and summing those copies writes kh * kw
    arrays the size of the input (the slowest part of MobileNetV2's step that way); one
    reduction per tap makes XLA write each tap's slice out first, since YNNPACK, which runs
    the reductions, reads no strided slice in place; autodiff's own rule reduces over strided
    slices, slower still."""
    xp, kernel = residuals
    kh, kw, c = kernel.shape
    sh, sw = strides
    _, hp, wp, _ = xp.shape
    oh, ow = g.shape[1:3]
    if oh < 1 or ow < 1:
        return jnp.zeros_like(xp), jnp.zeros_like(kernel)
    folded = [_fold_rows(_tap(xp, i, j, (oh, ow), strides) * g) for i in range(kh) for j in range(kw)]
    dk = jnp.stack(folded).reshape(kh * kw, -1, c).sum(1)
    dilated_h, dilated_w = (oh - 1) * sh + 1, (ow - 1) * sw + 1
    spread = jax.lax.pad(
        g,
        jnp.zeros((), g.dtype),
        ((0, 0, 0), (kh - 1, hp - dilated_h, sh - 1), (kw - 1, wp - dilated_w, sw - 1), (0, 0, 0)),
    )
    dxp = _valid_taps(spread, kernel[::-1, ::-1], (1, 1))
    return dxp.astype(xp.dtype), dk.reshape(kh, kw, c).astype(kernel.dtype)


_FOLD = 8  # rows summed onto one before the kernel gradient's reduction (RESULTS: 8 beat 16, tied or beat 4)


def _fold_rows(x: jax.Array) -> jax.Array:
    """(n, h, w, c) -> (n * h / q, w, c): the sum of q equal, contiguous blocks of its rows, q
    the largest divisor of n * h up to `_FOLD`. Elementwise adds, so XLA fuses them with the
    products they sum and writes a q-th of them."""
    n, h, w, c = x.shape
    rows = n * h
    q = max(d for d in range(1, _FOLD + 1) if rows % d == 0)
    x = x.reshape(q, rows // q, w, c)
    out = x[0]
    for k in range(1, q):
        out = out + x[k]
    return out


_taps_conv.defvjp(_taps_conv_fwd, _taps_conv_bwd)


def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int], impl: str = "auto") -> jax.Array:
    """A 'VALID' NHWC max pool. `impl` 'shifts' (or 'auto' on the CPU backend) takes the maximum
    of one strided slice per window position, with the gradient of `_shifted_max_bwd`; 'lax' (or
    'auto' elsewhere) is `nnx.max_pool`. Equal outputs and gradients, ties included.

    Why: autodiff's gradient of `lax.reduce_window` max tracks each window's argmax through a
    variadic reduce-window over four int32 index maps the size of the input, which XLA:CPU
    writes out on one thread (`wrapped_iota`, 22-27 ms of ResNet50's step at patch 224;
    benchmarks/RESULTS.md, "Where the train step's time goes", "DenseNet's cotangents written
    out once")."""
    if impl not in ("auto", "shifts", "lax"):
        raise ValueError(f"unknown max pool implementation {impl!r}; expected auto, shifts or lax")
    (kh, kw), (sh, sw) = window, strides
    empty = _out_size(x.shape[1], kh, sh) < 1 or _out_size(x.shape[2], kw, sw) < 1
    if impl == "lax" or (impl == "auto" and jax.default_backend() != "cpu") or empty:
        return nnx.max_pool(x, tuple(window), strides=tuple(strides), padding="VALID")
    return _shifted_max(x, tuple(window), tuple(strides))


def _window_taps(x: jax.Array, window: tuple[int, int], strides: tuple[int, int]) -> list[jax.Array]:
    out_hw = (_out_size(x.shape[1], window[0], strides[0]), _out_size(x.shape[2], window[1], strides[1]))
    return [_tap(x, i, j, out_hw, strides) for i in range(window[0]) for j in range(window[1])]


def written_out(x: jax.Array) -> jax.Array:
    """`x`, as the product of its last axis with the identity: the same values (ones times
    finite values plus zeros, at full precision), but written to memory once. XLA:CPU fuses an
    elementwise producer into each of its consumers and recomputes it there; a product it
    computes once. Gradients that read their cotangent as several shifted taps take it through
    here, since in DenseNet that cotangent is a sum of many BatchNorm gradients, and a taps
    loop with the sum fused in ran at 0.70-0.93x the step without it (benchmarks/RESULTS.md,
    "Narrow convolutions as products of their taps", "DenseNet's cotangents written out once").
    XLA:CPU drops `lax.optimization_barrier` before fusion, so a barrier cannot say this."""
    c = x.shape[-1]
    eye = jnp.eye(c, dtype=x.dtype)
    flat = jax.lax.dot_general(x.reshape(-1, c), eye, (((1,), (0,)), ((), ())), precision=jax.lax.Precision.HIGHEST)
    return flat.reshape(x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _shifted_max(x: jax.Array, window: tuple[int, int], strides: tuple[int, int]) -> jax.Array:
    return functools.reduce(jnp.maximum, _window_taps(x, window, strides))


def _shifted_max_fwd(x, window, strides):
    """Also keeps which window position holds each maximum: the first in row-major window
    order, the one `lax.reduce_window`'s gradient picks among ties (int8: a quarter of the
    output's float32 bytes). An argmax is a reduction, so XLA writes it out once rather than
    fusing it, recomputed, into the gradient's loop."""
    taps = _window_taps(x, window, strides)
    first = jnp.argmax(jnp.stack(taps), axis=0).astype(jnp.int8)
    return functools.reduce(jnp.maximum, taps), (first, x.shape)


def _shifted_max_bwd(window, strides, residuals, g):
    """Each window's cotangent goes to its first maximum. Window position (i, j) of output row
    o reads input row o * sh + i: row phase i % sh, row o + i // sh of that phase. So each
    phase's gradient is a sum of plain shifted pads of the selected cotangents, and the phases
    interleave into the input grid with one reshape."""
    first, (n, h, w, c) = residuals
    (kh, kw), (sh, sw) = window, strides
    g = written_out(g)  # read once per window position below
    oh, ow = g.shape[1:3]
    ph, pw = -(-h // sh), -(-w // sw)  # rows and columns per phase
    zero = jnp.zeros((), g.dtype)
    phases = [[jnp.zeros((n, ph, pw, c), g.dtype)] * sw for _ in range(sh)]
    for i in range(kh):
        for j in range(kw):
            (qi, ri), (qj, rj) = divmod(i, sh), divmod(j, sw)
            selected = jnp.where(first == i * kw + j, g, zero)
            phases[ri][rj] = phases[ri][rj] + jnp.pad(
                selected, ((0, 0), (qi, ph - oh - qi), (qj, pw - ow - qj), (0, 0))
            )
    rows = [jnp.stack(row, axis=3) for row in phases]  # (n, ph, pw, sw, c) per row phase
    dx = jnp.stack(rows, axis=2).reshape(n, ph * sh, pw * sw, c)  # (n, ph, sh, pw, sw, c) interleaved
    return (dx[:, :h, :w],)


_shifted_max.defvjp(_shifted_max_fwd, _shifted_max_bwd)


def gathered_taps_conv(lhs, rhs, window_strides, padding, precision=None, preferred_element_type=None):
    """An ungrouped, undilated NHWC x HWIO convolution as one matrix product: every kernel tap's
    (strided) slice of the padded input side by side in the channels, times the kernel reshaped
    to (kh*kw*cin, cout). A 1x1 stride-1 convolution is the product alone."""
    kh, kw, cin, cout = rhs.shape
    n, h, w, _ = lhs.shape
    (pt, pb), (pl, pr) = _explicit_pads(lhs.shape, rhs.shape, window_strides, padding)
    if pt or pb or pl or pr:
        lhs = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    taps = _window_taps(lhs, (kh, kw), tuple(window_strides))
    oh, ow = taps[0].shape[1:3]
    cols = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
    out = jax.lax.dot_general(
        cols.reshape(n * oh * ow, kh * kw * cin),
        rhs.reshape(kh * kw * cin, cout),
        (((1,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return out.reshape(n, oh, ow, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def taps_product_conv(lhs, rhs, pads, precision=None, preferred_element_type=None):
    """A stride-1, undilated NHWC x HWIO convolution computed from the output side: one product
    of the input with every tap's kernel side by side, (positions, cin) x (cin, kh*kw*cout),
    then each tap's outputs shifted into place and summed. XLA:CPU runs the product on every
    core, where YNNPACK runs a convolution with 64 or fewer output channels on one, and for a
    layer that narrows (DenseNet's 128 -> 32) the taps' outputs are small to shift. The
    gradients are `_taps_product_conv_bwd`'s (benchmarks/RESULTS.md, "Narrow convolutions as
    products of their taps", "DenseNet's cotangents written out once")."""
    kh, kw, cin, cout = rhs.shape
    n, h, w, _ = lhs.shape
    (pt, pb), (pl, pr) = pads
    oh, ow = h + pt + pb - kh + 1, w + pl + pr - kw + 1
    out_dtype = preferred_element_type or jnp.result_type(lhs, rhs)
    taps = jax.lax.dot_general(
        lhs.reshape(n * h * w, cin),
        rhs.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout),
        (((1,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=jnp.promote_types(out_dtype, jnp.float32),  # nine terms summed below
    ).reshape(n, h, w, kh, kw, cout)
    taps = jnp.pad(taps, ((0, 0), (pt, pb), (pl, pr), (0, 0), (0, 0), (0, 0)))
    out = None
    for i in range(kh):
        for j in range(kw):
            term = taps[:, i : i + oh, j : j + ow, i, j]
            out = term if out is None else out + term
    return out.astype(out_dtype)


def _xla_conv(lhs, rhs, pads, precision, preferred_element_type):
    return jax.lax.conv_general_dilated(
        lhs,
        rhs,
        (1, 1),
        pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def _taps_product_conv_fwd(lhs, rhs, pads, precision, preferred_element_type):
    return taps_product_conv(lhs, rhs, pads, precision, preferred_element_type), (lhs, rhs)


def _taps_product_conv_bwd(pads, precision, preferred_element_type, residuals, g):
    """The input's gradient is XLA's convolution's. The kernel's is one product of the
    cotangent's kh*kw shifted taps side by side with the input, (kh*kw*cout, positions) x
    (positions, cin), which XLA:CPU runs on every core straight from the input's NHWC layout.
    XLA's kernel-gradient convolution runs on one core (YNNPACK, 32 outputs) after a copy of the
    input transposed batch-minor, which XLA fills by recomputing the layer's BatchNorm and ReLU
    at a poor stride (5-12 ms a layer on DenseNet121's 56x56 maps at batch 4). The cotangent is
    written out first (`written_out`): in a dense block it is the sum of every later layer's
    BatchNorm gradient, which XLA would otherwise recompute in each tap."""
    x, k = residuals
    g = written_out(g)
    dx = _xla_input_grad(x, k, g, pads, precision, preferred_element_type)
    kh, kw, cin, cout = k.shape
    n, h, w, _ = x.shape
    (pt, _), (pl, _) = pads
    # Input position q meets kernel tap (i, j) at output position q + (pt - i, pl - j); the
    # cotangent padded by kh - 1 and kw - 1 on every side holds that for every q of the input.
    gp = jnp.pad(g, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
    top, left = kh - 1 + pt, kw - 1 + pl
    taps = [gp[:, top - i : top - i + h, left - j : left - j + w] for i in range(kh) for j in range(kw)]
    dk = jax.lax.dot_general(
        jnp.concatenate(taps, axis=-1).reshape(n * h * w, kh * kw * cout),
        x.reshape(n * h * w, cin),
        (((0,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=jnp.float32,
    )
    return dx, dk.reshape(kh, kw, cout, cin).transpose(0, 1, 3, 2).astype(k.dtype)


taps_product_conv.defvjp(_taps_product_conv_fwd, _taps_product_conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def sliced_kernel_grad_conv(lhs, rhs, pads, slices: tuple[int, int], precision=None, preferred_element_type=None):
    """XLA's stride-1 NHWC x HWIO convolution, whose kernel gradient is the sum of XLA's kernel
    gradients over tiles: `slices` = (runs of the batch, bands of output rows in each run).
    XLA:CPU computes a kernel gradient as one convolution of the input, transposed
    channel-major, with the cotangent as its window. Once those two operands outgrow about 2 MiB
    (one core's L2 on the VM measured), YNNPACK runs it at a third to a half of its rate:
    ResNet50's first-stage layers (4 x 56x56 x 64 -> 64) took 25-27 ms, against 9-11 ms as four
    single-image gradients, which XLA also runs two at a time on two cores (benchmarks/RESULTS.md,
    "Kernel gradients in slices of the batch, and the stems as products"). Where one image
    alone outgrows the budget, bands of its rows (each with the kernel's overlap of input rows)
    keep each part small. The forward pass and the input's gradient stay whole: sliced, they ran
    faster on some maps and slower on others."""
    return _xla_conv(lhs, rhs, pads, precision, preferred_element_type)


def _sliced_kernel_grad_conv_fwd(lhs, rhs, pads, slices, precision, preferred_element_type):
    return _xla_conv(lhs, rhs, pads, precision, preferred_element_type), (lhs, rhs)


def _sliced_kernel_grad_conv_bwd(pads, slices, precision, preferred_element_type, residuals, g):
    x, k = residuals
    dx = _xla_input_grad(x, k, g, pads, precision, preferred_element_type)
    parts = [
        _xla_kernel_grad(x_tile, k, g_tile, tile_pads, precision, preferred_element_type)
        for x_tile, g_tile, tile_pads in _kernel_grad_tiles(x, g, k.shape[0], pads, *slices)
    ]
    # a bfloat16 kernel's parts are summed in float32 and rounded once
    return dx, functools.reduce(jnp.add, [part.astype(jnp.float32) for part in parts]).astype(k.dtype)


def _kernel_grad_tiles(x, g, kh: int, pads, runs: int, bands: int):
    """(input, cotangent, pads) of each run of the batch and band of output rows. Output rows
    r0..r1-1 read the input's rows lo..hi-1 (lo = r0 - top, hi = r1 + kh - 1 - top); the part of
    that range outside the input becomes the tile's padding. A band that reads padding alone
    adds nothing to the gradient and is left out."""
    n, h = x.shape[:2]
    (top, _), width_pads = pads
    images = np.linspace(0, n, runs + 1).round().astype(int)
    rows = np.linspace(0, g.shape[1], bands + 1).round().astype(int)
    for i0, i1 in zip(images[:-1], images[1:]):
        for r0, r1 in zip(rows[:-1], rows[1:]):
            lo, hi = r0 - top, r1 + kh - 1 - top
            start, stop = min(max(lo, 0), h), max(min(hi, h), 0)
            if start < stop:
                yield x[i0:i1, start:stop], g[i0:i1, r0:r1], ((start - lo, hi - stop), width_pads)


def _xla_input_grad(x, k, g, pads, precision, preferred_element_type):
    """XLA's own gradient of `_xla_conv` with respect to its input: the transpose of the linear
    map, so no forward convolution is traced beside it."""
    (dx,) = jax.linear_transpose(lambda x: _xla_conv(x, k, pads, precision, preferred_element_type), x)(g)
    return dx


def _xla_kernel_grad(x, k, g, pads, precision, preferred_element_type):
    (dk,) = jax.linear_transpose(lambda k: _xla_conv(x, k, pads, precision, preferred_element_type), k)(g)
    return dk


sliced_kernel_grad_conv.defvjp(_sliced_kernel_grad_conv_fwd, _sliced_kernel_grad_conv_bwd)


@functools.cache  # one function per choice: equal static attributes, equal graph definitions
def conv_lowering(depthwise: str = "auto", dense: str = "auto"):
    """A `lax.conv_general_dilated` stand-in for nnx.Conv(conv_general_dilated=...), choosing per
    convolution what runs fastest on the CPU.

    Depthwise (one input channel per group), undilated NHWC convolutions go through
    `shifted_depthwise` when `depthwise` is 'shifts', or 'auto' on the CPU backend. Ungrouped,
    undilated NHWC convolutions go through `gathered_taps_conv` when `dense` is 'gather', or
    'auto' on the CPU backend for a 1x1 kernel, a kernel larger than its input map, a kernel
    over an image's few channels, or a wide kernel over few positions (`_gather_wins`);
    stride-1 ones go through `taps_product_conv` when `dense` is 'taps', or 'auto' on the CPU
    backend for a narrow layer over a mid-sized map (`_taps_product_wins`: DenseNet's growth
    layers). Everything else, and 'conv', goes through XLA's convolution; with 'auto' on the
    CPU backend a stride-1 one takes its kernel gradient in runs of the batch, or bands of
    an image's rows, where its operands outgrow a core's cache (`sliced_kernel_grad_conv`,
    `_kernel_grad_slices`). The kernel parameter is the same either way, so checkpoints and
    imported Keras weights do not depend on the choice; on a GPU 'auto' leaves every
    convolution to XLA.
    """
    if depthwise not in ("auto", "shifts", "conv"):
        raise ValueError(f"unknown depthwise lowering {depthwise!r}; expected auto, shifts or conv")
    if dense not in ("auto", "gather", "taps", "conv"):
        raise ValueError(f"unknown dense convolution lowering {dense!r}; expected auto, gather, taps or conv")

    def conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=None,
        rhs_dilation=None,
        dimension_numbers=None,
        feature_group_count=1,
        **kwargs,
    ):
        on_cpu = jax.default_backend() == "cpu"
        nhwc = dimension_numbers is None or (
            tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2)
            and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1)
            and tuple(dimension_numbers.out_spec) == (0, 3, 1, 2)
        )
        plain = nhwc and lhs.ndim == 4 and all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
        if plain and feature_group_count == lhs.shape[-1] > 1:
            if depthwise == "shifts" or (depthwise == "auto" and on_cpu):
                return shifted_depthwise(lhs, rhs, tuple(window_strides), padding)
        elif plain and feature_group_count == 1 and kwargs.get("out_sharding") is None:
            if dense == "gather" or (dense == "auto" and on_cpu and _gather_wins(lhs.shape, rhs.shape)):
                return gathered_taps_conv(
                    lhs,
                    rhs,
                    tuple(window_strides),
                    padding,
                    precision=kwargs.get("precision"),
                    preferred_element_type=kwargs.get("preferred_element_type"),
                )
            pads = _explicit_pads(lhs.shape, rhs.shape, window_strides, padding)
            if tuple(window_strides) == (1, 1) and min(min(p) for p in pads) >= 0:
                if dense == "taps" or (dense == "auto" and on_cpu and _taps_product_wins(lhs.shape, rhs.shape)):
                    return taps_product_conv(
                        lhs, rhs, pads, kwargs.get("precision"), kwargs.get("preferred_element_type")
                    )
                if dense == "auto" and on_cpu:
                    slices = _kernel_grad_slices(lhs.shape, rhs.shape, jnp.dtype(lhs.dtype).itemsize)
                    if slices != (1, 1):
                        return sliced_kernel_grad_conv(
                            lhs, rhs, pads, slices, kwargs.get("precision"), kwargs.get("preferred_element_type")
                        )
        return jax.lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            **kwargs,
        )

    return conv_general_dilated


def _explicit_pads(lhs_shape, rhs_shape, strides, padding) -> tuple[tuple[int, int], ...]:
    """((top, bottom), (left, right)) for an NHWC input and an HW... kernel, from 'SAME'/'VALID'
    or given pairs."""
    if isinstance(padding, str):
        return tuple(jax.lax.padtype_to_pads(lhs_shape[1:3], rhs_shape[:2], tuple(strides), padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _taps_product_wins(lhs_shape, rhs_shape) -> bool:
    """Where `taps_product_conv` beats XLA:CPU's convolution (RESULTS, "Narrow convolutions as
    products of their taps"): a kernel larger than 1x1 with at most `_NARROW` output channels
    (which YNNPACK runs on one core) over more than `_FEW_POSITIONS` map positions, whose taps'
    outputs (kh*kw*cout per position) stay within `_TAPS_GROWTH` times the input's channels and
    `_TAPS_ELEMENTS` elements in all: DenseNet's 128 -> 32 layers at batch 4 up to patch 224, or
    batch 8 at patch 64. Past those sizes writing the taps' outputs costs more than the second
    core gives."""
    n, h, w, cin = lhs_shape
    kh, kw, _, cout = rhs_shape
    if kh * kw == 1 or cout > _NARROW or n * h * w <= _FEW_POSITIONS:
        return False
    return kh * kw * cout <= _TAPS_GROWTH * cin and n * h * w * kh * kw * cout <= _TAPS_ELEMENTS


_NARROW = 64
_TAPS_GROWTH = 4
_TAPS_ELEMENTS = 4 * 2**20


def _kernel_grad_slices(lhs_shape, rhs_shape, itemsize: int) -> tuple[int, int]:
    """(runs of the batch, bands of rows) that `sliced_kernel_grad_conv` takes a stride-1
    layer's kernel gradient in: as many images a run as fit their input and cotangent in
    `_KERNEL_GRAD_BYTES`; where a single image outgrows it, one image a run in as many bands as
    bring each under it; (1, 1), whole, for a 1x1 kernel or where the whole batch fits.
    Measured on 4 x 28x28 to 56x56 maps of 32 to 128 channels and camnet's at batch 32 and 64,
    the runs split every layer that gained and none that lost more than 5% (a 4 x 35x35 x 48
    -> 64 layer; RESULTS, "Kernel gradients in slices of the batch, and the stems as
    products"); the bands were measured on ResNet50's and InceptionResNetV2's largest maps
    (RESULTS, "Kernel gradients in bands of rows")."""
    n, h, w, cin = lhs_shape
    kh, kw, _, cout = rhs_shape
    if kh * kw == 1:
        return 1, 1
    per_image = h * w * (cin + cout) * itemsize  # stride 1: the cotangent has about the input's positions
    if per_image > _KERNEL_GRAD_BYTES:
        return n, min(h, -(-per_image // _KERNEL_GRAD_BYTES))
    return -(-n // (_KERNEL_GRAD_BYTES // per_image)), 1


_KERNEL_GRAD_BYTES = 2 * 2**20


def _gather_wins(lhs_shape, rhs_shape) -> bool:
    """Where XLA:CPU's convolution loses to the product (benchmarks/conv_lowering.py; RESULTS,
    "Convolutions as matrix products on the CPU" and "Wide convolutions over few positions"):
    - a 1x1 convolution is 2.0-2.3x slower than the same product on any map;
    - a kernel larger than its map (ResNet50's 3x3 layers on the 2x2 maps of patch 64) is left
      to Eigen and takes about 36x the product;
    - a wide convolution (256 or more channels in and out) over few positions (a batch of at
      most `_FEW_POSITIONS` map positions: ResNet50's last stage at patch 224, batch 4) runs
      YNNPACK's convolution and both its gradients well below the product's rate, while the
      gathered copy stays small (nine times a few hundred positions).
    - a kernel over the image's own few channels (the stems: ResNet50's and DenseNet's 7x7
      stride 2 from 3 channels, MobileNetV2's 3x3) took 1.2-2.4x as long, forward and kernel
      gradient, as the product of its gathered taps, which are at most `_FEW_CHANNELS_IN` *
      kh*kw values a position ("Kernel gradients in slices of the batch, and the stems as
      products").
    On other maps the convolution holds its own, and the gathered taps would cost kh*kw times
    the activation memory."""
    n, h, w, cin = lhs_shape
    kh, kw, _, cout = rhs_shape
    if kh == kw == 1 or kh > h or kw > w or cin <= _FEW_CHANNELS_IN:
        return True
    return n * h * w <= _FEW_POSITIONS and min(cin, cout) >= _WIDE


_FEW_POSITIONS = 256
_WIDE = 256
_FEW_CHANNELS_IN = 4


def _fixed_filter(x: jax.Array, kernel: np.ndarray) -> jax.Array:
    """The same 2-D kernel on every channel, 'SAME' padding by edge replication."""
    k = kernel.shape[0]
    w = jnp.asarray(np.tile(kernel[:, :, None, None], (1, 1, 1, x.shape[-1])), x.dtype)
    pad = k // 2
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    return shifted_depthwise(xp, w, padding="VALID")


def box3_residual(x: jax.Array) -> jax.Array:
    """Image minus its 3x3 box blur: removes scene content, keeps sensor and demosaicing noise."""
    return x - _fixed_filter(x, np.full((3, 3), 1.0 / 9.0, np.float32))


def kv_residual(x: jax.Array) -> jax.Array:
    return _fixed_filter(x, KV_KERNEL)


class ConstrainedConv(nnx.Module):
    """Bayar and Stamm's constrained convolution: each filter's centre tap is -1 and the
    other taps sum to 1, so it can only learn prediction-error (high-pass) filters.

    The constraint is a reparametrisation applied in the forward pass, which keeps the
    train step pure (no projection after the optimizer update).
    """

    def __init__(self, in_features: int, out_features: int, size: int = 5, *, rngs: nnx.Rngs):
        init = nnx.initializers.uniform(1.0)
        self.kernel = nnx.Param(init(rngs.params(), (size, size, in_features, out_features)))
        self.size = size

    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel.value
        c = self.size // 2
        mask = jnp.ones((self.size, self.size, 1, 1), k.dtype).at[c, c].set(0.0)
        k = k * mask
        k = k / (jnp.sum(k, axis=(0, 1), keepdims=True) + 1e-6)  # off-centre taps sum to 1
        k = k - (1.0 - mask)  # centre tap -1
        return jax.lax.conv_general_dilated(
            x, k.astype(x.dtype), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )


HIGHPASS_KINDS = ("none", "box3", "kv5", "constrained")


class HighPass(nnx.Module):
    """The forensic first stage, chosen by config: 'none', 'box3', 'kv5' or 'constrained'.

    `clip` > 0 truncates the residual to +-clip grey levels, as SRM features and steganalysis
    networks' truncation units do: a scene edge leaves a residual of tens of grey levels where
    the sensor and demosaicing traces leave one or two, and unclipped the edges dominate every
    statistic the first layers can form. `pixel_mode` is the backbone's preprocessing, which
    sets what a grey level is. Keeps 3 channels, so an ImageNet backbone's first convolution
    still fits.
    """

    def __init__(self, kind: str, *, clip: float = 0.0, pixel_mode: str = "tf", rngs: nnx.Rngs):
        if kind not in HIGHPASS_KINDS:
            raise ValueError(f"unknown high-pass {kind!r}; expected none, box3, kv5 or constrained")
        if clip < 0 or (clip and kind == "none"):
            raise ValueError(f"high-pass clip {clip} needs clip >= 0 and a high-pass other than 'none'")
        self.kind = kind
        self.constrained = ConstrainedConv(3, 3, 5, rngs=rngs) if kind == "constrained" else None
        self.bound = tuple(float(v) for v in clip * gray_level(pixel_mode)) if clip else None

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kind == "box3":
            x = box3_residual(x)
        elif self.kind == "kv5":
            x = kv_residual(x)
        elif self.kind == "constrained":
            x = self.constrained(x)
        if self.bound is None:
            return x
        bound = jnp.asarray(self.bound, x.dtype)
        return jnp.clip(x, -bound, bound)


def space_to_depth(x: jax.Array, block: int) -> jax.Array:
    """Lossless (H, W, C) -> (H/b, W/b, b*b*C): the 2x2 CFA and 8x8 JPEG phases stay intact in
    the channels, and XLA:CPU convolves the smaller, deeper map much faster."""
    b, h, w, c = x.shape
    if h % block or w % block:
        raise ValueError(f"space_to_depth({block}) needs H and W divisible by {block}, got {h}x{w}")
    x = x.reshape(b, h // block, block, w // block, block, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // block, w // block, block * block * c)


class RunningStat(nnx.BatchStat):
    """A BatchNorm running statistic whose whole-array update skips flax's sharding probe
    while tracing.

    `nnx.Variable.set_value` compares `value.sharding` on every `stat[...] = value`; on a
    tracer that attribute raises, and the error message JAX builds walks every equation
    traced so far. Once per BatchNorm that made tracing quadratic in depth: 18 of the 33 s
    that DenseNet121's train step took to lower (jax 0.10, flax 0.12; upstream: the
    quadratic-tracing pull request jax-ml/jax#40041). A traced value of the same shape and
    dtype replaces the array, which is what flax does on that path too.
    """

    def __setitem__(self, key, value) -> None:
        current = self.get_value()
        if (
            key is Ellipsis
            and isinstance(value, jax.core.Tracer)
            and value.shape == current.shape
            and value.dtype == current.dtype
        ):
            self.set_value(value)
        else:
            super().__setitem__(key, value)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x, scale, bias, epsilon: float, axis_name: str | None):
    """Training-mode batch normalisation over every axis but the last: (y, mean, var).

    The same forward as flax's (`use_fast_variance`, statistics in float32, the variance
    clipped at 0, `axis_name`'s devices averaged) with its gradient written out: two
    per-channel reductions of the cotangent, then one elementwise pass for the input's
    gradient. Autodiff of flax's forward reaches the same numbers through more passes over
    the activations, which dominate the step of a network of thin layers on XLA:CPU
    (MobileNetV2 at patch 224; benchmarks/RESULTS.md, "A batch norm with its own gradient").
    `mean` and `var` are for the running averages only: their cotangents must be zero.
    """
    y, mean, var, _ = _batch_norm_forward(x, scale, bias, epsilon, axis_name)
    return y, mean, var


def moments(x: jax.Array, axis_name: str | None) -> jax.Array:
    """(2, channels) float32: each channel's mean and mean square over every other axis (and
    over `axis_name`'s devices), the statistics a training-mode BatchNorm normalises with."""
    axes = tuple(range(x.ndim - 1))
    x32 = x.astype(jnp.float32)
    stacked = jnp.stack([x32.mean(axes), (x32 * x32).mean(axes)])
    return stacked if axis_name is None else jax.lax.pmean(stacked, axis_name)


def _statistics(stacked_moments: jax.Array, epsilon: float):
    """(mean, variance clipped at 0, 1 / sqrt(variance + epsilon)) from `moments`."""
    mean, mean_sq = stacked_moments[0], stacked_moments[1]
    var = jnp.maximum(0.0, mean_sq - mean * mean)
    return mean, var, jax.lax.rsqrt(var + epsilon)


def _batch_norm_forward(x, scale, bias, epsilon, axis_name):
    mean, var, inv = _statistics(moments(x, axis_name), epsilon)
    y = (x.astype(jnp.float32) - mean) * (inv * scale.astype(jnp.float32)) + bias.astype(jnp.float32)
    return y.astype(x.dtype), mean, var, inv


def _batch_norm_train_fwd(x, scale, bias, epsilon, axis_name):
    y, mean, var, inv = _batch_norm_forward(x.value, scale.value, bias.value, epsilon, axis_name)
    return (y, mean, var), (x.value, scale.value, bias.value, mean, inv)


def _batch_norm_train_bwd(epsilon, axis_name, residuals, cotangents):
    x, scale, bias, mean, inv = residuals
    g, g_mean, g_var = cotangents
    if not (isinstance(g_mean, SymbolicZero) and isinstance(g_var, SymbolicZero)):
        raise ValueError("batch_norm_train: differentiate y only; mean and var feed the running averages")
    axes = tuple(range(x.ndim - 1))
    g32 = g.astype(jnp.float32)
    centred = x.astype(jnp.float32) - mean
    sums = jnp.stack([g32.sum(axes), (g32 * centred).sum(axes)])
    d_scale, d_bias, shift, slope = _gradient_terms(sums, x.size // x.shape[-1], inv, axis_name)
    d_x = (scale.astype(jnp.float32) * inv) * (g32 - shift - centred * slope)
    return d_x.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(bias.dtype)


def _gradient_terms(sums, count: int, inv, axis_name: str | None):
    """BatchNorm's gradient from the per-channel sums of the cotangent g and of g times the
    centred input over this device's `count` positions: (d_scale, d_bias, shift, slope), the
    parameters' gradients this device's own, and the input's gradient
    scale * inv * (g - shift - centred * slope), which sees every device's batch, as the
    statistics did."""
    d_bias, d_scale = sums[0], sums[1] * inv
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
        count = count * jax.lax.psum(1, axis_name)
    return d_scale, d_bias, sums[0] / count, inv * inv * sums[1] / count


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd, symbolic_zeros=True)


def _channel_slices(pieces) -> list[slice]:
    ends = np.cumsum([p.shape[-1] for p in pieces])
    return [slice(int(end - p.shape[-1]), int(end)) for p, end in zip(pieces, ends)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def batch_norm_relu_concat(pieces, piece_moments, scale, bias, epsilon: float, axis_name: str | None):
    """relu(training-mode BatchNorm(concatenate(pieces, -1))) from each piece's `moments`:
    (z, mean, var), as `batch_norm_train` gives them for the concatenation.

    Each layer of a dense block normalises the concatenation of every feature map before it.
    Concatenating the maps first means copying them all once per layer, reading the copy
    again for its statistics, and slicing its cotangent apart in the backward pass. Here
    each map is normalised where it lies and only the normalised maps, which the 1x1
    convolution reads, are concatenated; a map's statistics, the same in every layer, come
    in computed once (`moments`). The gradient is BatchNorm's written one (`batch_norm_train`)
    through the ReLU, piece by piece; it includes the path through the statistics, so
    `piece_moments` get a zero cotangent. Both are tuples (`BatchNorm.relu_concat` passes them).
    """
    z, mean, var, _ = _bn_relu_concat_forward(pieces, piece_moments, scale, bias, epsilon)
    return z, mean, var


def _bn_relu_concat_forward(pieces, piece_moments, scale, bias, epsilon):
    mean, var, inv = _statistics(jnp.concatenate(piece_moments, axis=1), epsilon)
    a, b = inv * scale.astype(jnp.float32), bias.astype(jnp.float32)
    normalised = [
        jax.nn.relu((p.astype(jnp.float32) - mean[s]) * a[s] + b[s]) for p, s in zip(pieces, _channel_slices(pieces))
    ]
    return jnp.concatenate(normalised, axis=-1).astype(pieces[0].dtype), mean, var, inv


def _bn_relu_concat_fwd(pieces, piece_moments, scale, bias, epsilon, axis_name):
    pieces = tuple(p.value for p in pieces)
    moments_, scale, bias = tuple(m.value for m in piece_moments), scale.value, bias.value
    z, mean, var, inv = _bn_relu_concat_forward(pieces, moments_, scale, bias, epsilon)
    return (z, mean, var), (pieces, moments_, scale, bias, mean, inv)


def _bn_relu_concat_bwd(epsilon, axis_name, residuals, cotangents):
    pieces, piece_moments, scale, bias, mean, inv = residuals
    g, g_mean, g_var = cotangents
    if not (isinstance(g_mean, SymbolicZero) and isinstance(g_var, SymbolicZero)):
        raise ValueError("batch_norm_relu_concat: differentiate z only; mean and var feed the running averages")
    axes = tuple(range(g.ndim - 1))
    a, b = inv * scale.astype(jnp.float32), bias.astype(jnp.float32)
    slices = _channel_slices(pieces)
    centred, g_kept = [], []  # per piece: x - mean, and the cotangent where the ReLU passed it
    for p, s in zip(pieces, slices):
        c = p.astype(jnp.float32) - mean[s]
        centred.append(c)
        g_kept.append(jnp.where(c * a[s] + b[s] > 0, g[..., s].astype(jnp.float32), 0.0))
    sums = jnp.concatenate([jnp.stack([gk.sum(axes), (gk * c).sum(axes)]) for gk, c in zip(g_kept, centred)], axis=1)
    d_scale, d_bias, shift, slope = _gradient_terms(sums, g.size // g.shape[-1], inv, axis_name)
    d_pieces = tuple(
        (a[s] * (gk - shift[s] - c * slope[s])).astype(p.dtype) for p, s, gk, c in zip(pieces, slices, g_kept, centred)
    )
    zeros = tuple(jnp.zeros_like(m) for m in piece_moments)
    return d_pieces, zeros, d_scale.astype(scale.dtype), d_bias.astype(bias.dtype)


batch_norm_relu_concat.defvjp(_bn_relu_concat_fwd, _bn_relu_concat_bwd, symbolic_zeros=True)

BN_GRADS = ("written", "autodiff")


class BatchNorm(nnx.BatchNorm):
    """`nnx.BatchNorm` with `RunningStat` statistics (same state layout), whose training-mode
    forward is `batch_norm_train` when `grad` is 'written' (the default) and flax's own,
    differentiated by JAX, when it is 'autodiff'. Inference is flax's either way."""

    def __init__(self, *args, grad: str = "written", **kwargs):
        if grad not in BN_GRADS:
            raise ValueError(f"BatchNorm grad must be one of {BN_GRADS}, got {grad!r}")
        super().__init__(*args, **kwargs)
        self.grad = grad
        self.mean = RunningStat(self.mean.get_value())
        self.var = RunningStat(self.var.get_value())

    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        if not self._written(x, use_running_average, mask):
            return super().__call__(x, use_running_average, mask=mask)
        scale_and_bias = self._scale_and_bias(x.shape[-1])
        x, scale, bias = self.promote_dtype((x, *scale_and_bias), dtype=self.dtype)  # as flax casts them
        y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, self.axis_name)
        self._update_running_averages(mean, var)
        return y

    def _written(self, x, use_running_average=None, mask=None) -> bool:
        """Whether a call on `x` takes the written training-mode path rather than flax's."""
        training = not (self.use_running_average if use_running_average is None else use_running_average)
        flax_only = mask is not None or self.axis_index_groups is not None or not self.use_fast_variance
        return training and self.grad == "written" and not flax_only and self.axis in (-1, x.ndim - 1)

    def _scale_and_bias(self, features: int):
        """The scale and bias, ones and zeros where `use_scale` or `use_bias` turned them off."""
        scale = self.scale[...] if self.scale is not None else jnp.ones((features,), self.param_dtype)
        bias = self.bias[...] if self.bias is not None else jnp.zeros((features,), self.param_dtype)
        return scale, bias

    def _update_running_averages(self, mean, var) -> None:
        self.mean[...] = jax.lax.stop_gradient(self.momentum * self.mean[...] + (1 - self.momentum) * mean)
        self.var[...] = jax.lax.stop_gradient(self.momentum * self.var[...] + (1 - self.momentum) * var)

    def piece_moments(self, x: jax.Array) -> jax.Array | None:
        """`moments(x)` for `relu_concat`, where this BatchNorm would use them; None elsewhere."""
        return moments(x, self.axis_name) if self._written(x) else None

    def relu_concat(self, pieces: typing.Sequence[jax.Array], piece_moments: typing.Sequence) -> jax.Array:
        """relu(self(jnp.concatenate(pieces, -1))). In training mode the pieces are normalised
        apart and only the result is concatenated (`batch_norm_relu_concat`); `piece_moments`
        holds `self.piece_moments` of each piece, computed once however many layers read it."""
        if any(m is None for m in piece_moments) or not self._written(pieces[0]):
            return jax.nn.relu(self(jnp.concatenate(pieces, axis=-1)))
        scale_and_bias = self._scale_and_bias(sum(p.shape[-1] for p in pieces))
        *pieces, scale, bias = self.promote_dtype((*pieces, *scale_and_bias), dtype=self.dtype)
        z, mean, var = batch_norm_relu_concat(
            tuple(pieces), tuple(piece_moments), scale, bias, self.epsilon, self.axis_name
        )
        self._update_running_averages(mean, var)
        return z


@dataclasses.dataclass(frozen=True)
class Layers:
    """The convolutions and BatchNorms of one network, made with what all of them share.

    Each family makes one (`make`) and builds every layer through it, so a family's Keras
    settings - BatchNorm momentum and epsilon, conv biases and default padding, the convolution
    lowerings (`conv_lowering`) - are stated once; a layer that differs passes its own keyword (`use_scale=False`,
    `padding=...`).
    """

    rngs: nnx.Rngs
    dtype: typing.Any = jnp.float32
    param_dtype: typing.Any = jnp.float32
    bn_axis_name: str | None = None
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    conv_bias: bool = False
    conv_padding: typing.Any = "SAME"
    depthwise_impl: str = "auto"  # auto | shifts | conv: see conv_lowering
    conv_impl: str = "auto"  # auto | gather | taps | conv: see conv_lowering
    bn_grad: str = "written"  # written | autodiff: see BatchNorm

    def conv(self, cin: int, cout: int, kernel, **overrides) -> nnx.Conv:
        kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        kw = dict(
            use_bias=self.conv_bias,
            padding=self.conv_padding,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            rngs=self.rngs,
        )
        kw["conv_general_dilated"] = conv_lowering(self.depthwise_impl, self.conv_impl)
        kw.update(overrides)
        return nnx.Conv(cin, cout, kernel, **kw)

    def bn(self, features: int, **overrides) -> BatchNorm:
        kw = dict(
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            axis_name=self.bn_axis_name,
            grad=self.bn_grad,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            rngs=self.rngs,
        )
        kw.update(overrides)
        return BatchNorm(features, **kw)
