"""The JPEG quantisation trace: which quantisation steps the luma DCT of an image still shows.

A camera's JPEG encoder quantises every 8x8 block's DCT coefficient k to a multiple of its
table's step q_k, and the table is a property of the camera model (its quality setting, or a
maker's own table). Decoding to pixels and cutting a patch on the 8 px grid keeps that: the
block DCT of the decoded luma sits within the decoder's rounding noise (a fraction of a
unit) of multiples of q_k. A small CNN on noise residuals has to discover an aligned 8x8
transform and a periodic non-linearity before it can read this; given the trace, camnet's
`quick` recipe goes from 0.637 to 0.783 test accuracy on the synthetic set over three seeds
(benchmarks/RESULTS.md, "camnet with the JPEG quantisation trace").

The trace of a patch is, for each of the 64 luma frequencies and each candidate step q in
1..`max_step`, the mean over the patch's blocks of cos(2 pi c / q): near 1 where the
coefficients are multiples of q, near 0 where they are not. It needs patches cut on the
encoder's grid (training crops are, for JPEG sources; `evaluate --grid found` and
`camjax.predict` find the grid of a crop). Rotations and flips of the D4 views only
transpose the frequencies or flip signs, which the cosine ignores. A manipulated patch
(resized, gamma-corrected, recompressed) loses or replaces the trace; the head knows which
patches were manipulated (the injected flag).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from camjax.extras.jpeg_grid import LUMA, dct_matrix

MAX_STEP = 32  # candidate steps 1..32 cover the luma tables of JPEG quality ~85 and up


def block_dct(luma: jax.Array) -> jax.Array:
    """(N, H, W) luma, H and W multiples of 8 -> (N, H/8 * W/8, 64) block DCT coefficients,
    frequency index 8 * u + v (u vertical)."""
    n, h, w = luma.shape
    if h % 8 or w % 8:
        raise ValueError(f"the JPEG trace needs patches whose sides are multiples of 8, got {h}x{w}")
    blocks = luma.reshape(n, h // 8, 8, w // 8, 8).transpose(0, 1, 3, 2, 4).reshape(n, -1, 8, 8)
    d = jnp.asarray(dct_matrix(), jnp.float32)
    coefs = jnp.einsum("ui,nbij,vj->nbuv", d, blocks, d, precision=jax.lax.Precision.HIGHEST)
    return coefs.reshape(n, -1, 64)


def quantisation_trace(pixels: jax.Array, max_step: int = MAX_STEP) -> jax.Array:
    """(N, H, W, 3) RGB pixel values in [0, 255] -> (N, 64, max_step) trace (float32)."""
    luma = jnp.tensordot(pixels.astype(jnp.float32), jnp.asarray(LUMA, jnp.float32), axes=[[3], [0]]) - 128.0
    coefs = block_dct(luma)
    steps = jnp.arange(1, max_step + 1, dtype=jnp.float32)
    return jnp.cos((2.0 * jnp.pi / steps) * coefs[..., None]).mean(axis=1)


class JpegTrace(nnx.Module):
    """Pixels -> the quantisation trace -> `width` learned features for the head."""

    def __init__(self, width: int, *, max_step: int = MAX_STEP, dtype=jnp.float32, param_dtype=jnp.float32, rngs):
        self.max_step = max_step
        self.width = width
        self.project = nnx.Linear(64 * max_step, width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        trace = quantisation_trace(pixels, self.max_step)  # float32 whatever the compute dtype
        return nnx.relu(self.project(trace.reshape(trace.shape[0], -1))).astype(jnp.float32)
