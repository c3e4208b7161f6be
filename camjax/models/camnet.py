"""camnet: a compact forensic CNN that trains in minutes on a CPU.

In the spirit of Bondi et al. (2017): small patches, a few 3x3 convolutions, no scene
semantics to learn. The classifier's high-pass stage removes content first; a lossless
space-to-depth stem keeps the CFA (2x2) and JPEG (8x8) phases in the channels while
shrinking the spatial size, which is what makes XLA:CPU convolution gradients fast.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from camjax.models.layers import Layers, space_to_depth
from camjax.models.registry import register


class ConvBN(nnx.Module):
    def __init__(self, cin, cout, *, strides=1, make: Layers):
        self.conv = make.conv(cin, cout, 3, strides=strides)
        self.bn = make.bn(cout)

    def __call__(self, x):
        return nnx.relu(self.bn(self.conv(x)))


class CamNet(nnx.Module):
    """space-to-depth stem, then stages of 3x3 ConvBN blocks; each later stage halves the map."""

    def __init__(
        self,
        *,
        stem: int = 4,
        widths: Sequence[int] = (64, 128, 256),
        blocks: int = 2,
        in_channels: int = 3,
        conv_impl: str = "auto",  # auto | gather | taps | conv: see layers.conv_lowering
        bn_grad: str = "autodiff",  # written | autodiff: see layers.BatchNorm (written lost here)
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        bn_axis_name: str | None = None,
        rngs: nnx.Rngs,
    ):
        self.stem = stem
        make = Layers(
            rngs=rngs,
            dtype=dtype,
            param_dtype=param_dtype,
            bn_axis_name=bn_axis_name,
            bn_momentum=0.9,
            bn_epsilon=1e-5,
            conv_impl=conv_impl,
            bn_grad=bn_grad,
        )
        layers = []
        cin = in_channels * stem * stem
        for i, width in enumerate(widths):
            for j in range(blocks):
                layers.append(ConvBN(cin, width, strides=2 if (i > 0 and j == 0) else 1, make=make))
                cin = width
        self.layers = nnx.List(layers)
        self.num_features = cin

    def __call__(self, x: jax.Array) -> jax.Array:
        x = space_to_depth(x, self.stem) if self.stem > 1 else x
        for layer in self.layers:
            x = layer(x)
        return x


@register("camnet", preprocess="tf")
def camnet(**kwargs) -> CamNet:
    return CamNet(**kwargs)
