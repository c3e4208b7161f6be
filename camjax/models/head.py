"""The classifier: high-pass stage, backbone, pooling and the flag-injection head."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from camjax.cameras import NUM_MANIPULATIONS
from camjax.models.jpeg_trace import JpegTrace
from camjax.models.layers import HighPass, pixels_of, space_to_depth

POOLINGS = ("avg", "max", "avgmax")  # of the feature map, before the head


class FlagHead(nnx.Module):
    """Pooled features ++ is_manipulated -> FC layers with dropout -> class logits.

    The flag tells the network whether a patch was manipulated (the challenge's test file
    names say so); an optional auxiliary head predicts which of the 9 manipulations it was.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        hidden: Sequence[int] = (512, 256),
        dropout: Sequence[float] = (0.3, 0.1),
        inject_flag: bool = True,
        aux_head: bool = True,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if len(dropout) != len(hidden):
            raise ValueError(f"head.dropout {tuple(dropout)} needs one rate per hidden layer {tuple(hidden)}")
        self.inject_flag = inject_flag
        dims = [in_features + int(inject_flag), *hidden]
        self.dropouts = nnx.List([nnx.Dropout(rate) for rate in dropout])
        self.hidden = nnx.List(
            [nnx.Linear(a, b, dtype=dtype, param_dtype=param_dtype, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])]
        )
        self.logits = nnx.Linear(dims[-1], num_classes, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.manip_logits = (
            nnx.Linear(dims[-1], NUM_MANIPULATIONS, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            if aux_head
            else None
        )

    def __call__(self, features: jax.Array, is_manipulated: jax.Array, *, rngs: nnx.Rngs | None = None):
        x = features
        if self.inject_flag:
            x = jnp.concatenate([x, is_manipulated.astype(x.dtype)[:, None]], axis=-1)
        for dropout, dense in zip(self.dropouts, self.hidden):
            x = dropout(x, rngs=rngs)  # Keras order: Dropout before each Dense
            x = nnx.relu(dense(x))
        out = {"logits": self.logits(x).astype(jnp.float32)}
        if self.manip_logits is not None:
            out["manip_logits"] = self.manip_logits(x).astype(jnp.float32)
        return out


class Classifier(nnx.Module):
    """images (preprocessed float NHWC) + is_manipulated -> {'logits', 'manip_logits'}."""

    def __init__(
        self,
        backbone: nnx.Module,
        num_classes: int,
        *,
        highpass: str = "none",
        highpass_clip: float = 0.0,
        space_to_depth: int = 1,
        pooling: str = "avg",
        jpeg_trace: int = 0,
        pixel_mode: str = "tf",
        head_kwargs: dict | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """`jpeg_trace` > 0 adds that many features of the JPEG quantisation trace
        (`camjax.models.jpeg_trace`) to the pooled ones; `pixel_mode` is the backbone's
        preprocessing, which the trace undoes to read pixel values."""
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected avg, max or avgmax")
        self.highpass = HighPass(highpass, clip=highpass_clip, pixel_mode=pixel_mode, rngs=rngs)
        self.space_to_depth = space_to_depth
        self.backbone = backbone
        self.pooling = pooling
        self.dtype = dtype
        self.pixel_mode = pixel_mode
        self.jpeg_trace = (
            JpegTrace(jpeg_trace, dtype=dtype, param_dtype=param_dtype, rngs=rngs) if jpeg_trace > 0 else None
        )
        in_features = backbone.num_features * (2 if pooling == "avgmax" else 1) + max(jpeg_trace, 0)
        self.head = FlagHead(
            in_features, num_classes, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **(head_kwargs or {})
        )

    def feature_map(self, images: jax.Array) -> jax.Array:
        """The last backbone feature map before pooling (float32, NHWC): what Grad-CAM weighs."""
        x = self.highpass(images.astype(jnp.float32)).astype(self.dtype)
        if self.space_to_depth > 1:
            x = space_to_depth(x, self.space_to_depth)
        fmap = self.backbone(x)
        if 0 in fmap.shape[1:3]:  # static: caught at trace time, before any NaN average
            raise ValueError(
                f"{type(self.backbone).__name__} maps a {images.shape[1]}x{images.shape[2]} input "
                f"(space_to_depth {self.space_to_depth}) to an empty feature map {fmap.shape}: use a larger data.patch"
            )
        return fmap.astype(jnp.float32)

    def pool(self, fmap: jax.Array) -> jax.Array:
        if self.pooling == "avg":
            return fmap.mean(axis=(1, 2))
        if self.pooling == "max":
            return fmap.max(axis=(1, 2))
        return jnp.concatenate([fmap.mean(axis=(1, 2)), fmap.max(axis=(1, 2))], axis=-1)

    def features_from(self, images: jax.Array, fmap: jax.Array) -> jax.Array:
        """What the head reads: the pooled feature map `fmap` of `images`, then the JPEG trace's
        features of `images` when the model has it (float32). Grad-CAM differentiates through
        `fmap`."""
        pooled = self.pool(fmap)
        if self.jpeg_trace is None:
            return pooled
        return jnp.concatenate([pooled, self.jpeg_trace(pixels_of(images, self.pixel_mode))], axis=-1)

    def features(self, images: jax.Array) -> jax.Array:
        """The head's input features (float32): the embedding users extract."""
        return self.features_from(images, self.feature_map(images))

    def __call__(self, images: jax.Array, is_manipulated: jax.Array, *, rngs: nnx.Rngs | None = None):
        return self.head(self.features(images).astype(self.dtype), is_manipulated, rngs=rngs)
