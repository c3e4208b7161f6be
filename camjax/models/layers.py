"""Forensic input layers shared by every backbone: preprocessing, high-pass residuals, space-to-depth."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

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


# The 5x5 "KV" high-pass kernel of the challenge's starter code (Fridrich/Kodovsky SRM).
KV_KERNEL = np.array(
    [
        [-1, 2, -2, 2, -1],
        [2, -6, 8, -6, 2],
        [-2, 8, -12, 8, -2],
        [2, -6, 8, -6, 2],
        [-1, 2, -2, 2, -1],
    ],
    np.float32,
) / 12.0


def _depthwise(x: jax.Array, kernel: np.ndarray) -> jax.Array:
    """The same 2-D kernel on every channel, 'SAME' padding by edge replication."""
    c = x.shape[-1]
    k = kernel.shape[0]
    w = jnp.asarray(np.tile(kernel[:, :, None, None], (1, 1, 1, c)), x.dtype)
    pad = k // 2
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    return jax.lax.conv_general_dilated(
        xp, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c
    )


def box3_residual(x: jax.Array) -> jax.Array:
    """Image minus its 3x3 box blur: removes scene content, keeps sensor and demosaicing noise."""
    return x - _depthwise(x, np.full((3, 3), 1.0 / 9.0, np.float32))


def kv_residual(x: jax.Array) -> jax.Array:
    return _depthwise(x, KV_KERNEL)


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


class HighPass(nnx.Module):
    """The forensic first stage, chosen by config: 'none', 'box3', 'kv5' or 'constrained'.

    Keeps 3 channels, so an ImageNet backbone's first convolution still fits.
    """

    def __init__(self, kind: str, *, rngs: nnx.Rngs):
        if kind not in ("none", "box3", "kv5", "constrained"):
            raise ValueError(f"unknown high-pass {kind!r}; expected none, box3, kv5 or constrained")
        self.kind = kind
        self.constrained = ConstrainedConv(3, 3, 5, rngs=rngs) if kind == "constrained" else None

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kind == "box3":
            return box3_residual(x)
        if self.kind == "kv5":
            return kv_residual(x)
        if self.kind == "constrained":
            return self.constrained(x)
        return x


def space_to_depth(x: jax.Array, block: int) -> jax.Array:
    """Lossless (H, W, C) -> (H/b, W/b, b*b*C): the 2x2 CFA and 8x8 JPEG phases stay intact in
    the channels, and XLA:CPU convolves the smaller, deeper map much faster."""
    b, h, w, c = x.shape
    if h % block or w % block:
        raise ValueError(f"space_to_depth({block}) needs H and W divisible by {block}, got {h}x{w}")
    x = x.reshape(b, h // block, block, w // block, block, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // block, w // block, block * block * c)
