"""ResNet50, layer for layer as keras.applications.ResNet50 (include_top=False), in Flax NNX.

Faithful to the Keras definition (not torchvision's): biased convolutions before every
BatchNorm (epsilon 1.001e-5, momentum 0.99), explicit zero padding before the 7x7 stem and
the max pool, the stride on the first 1x1 convolution of each stage - so ImageNet weights
import exactly (`camjax.convert`) and the features match Keras to float precision.

`stem_stride=1` / `stem_pool=False` remove the stem's early downsampling (the 7x7 stride-2
convolution and the 3x3 stride-2 max pool) for forensic inputs, whose traces live at the
pixel scale; `zero_init_residual=True` starts every block's last BatchNorm scale at zero, so
the network starts as its shortcuts (an initialisation: imported weights replace it). None
changes a weight's shape: ImageNet weights still import.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from camjax.models.layers import Layers, max_pool
from camjax.models.registry import register

BN_EPSILON = 1.001e-5
BN_MOMENTUM = 0.99  # Keras' default


def zero_pad(x: jax.Array, pad: int) -> jax.Array:
    """keras.layers.ZeroPadding2D(pad) on NHWC."""
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


class Bottleneck(nnx.Module):
    """Keras' `block1`: 1x1 (stride) -> 3x3 -> 1x1 (x4), plus identity or projected shortcut.

    A strided 1x1 convolution reads every `stride`-th pixel and nothing else, so the block
    takes those pixels once (`x[:, ::s, ::s]`) and runs both 1x1 convolutions at stride 1: the
    same outputs and gradients, the same kernels (Keras weights import as before). XLA:CPU
    runs the input gradient of a strided convolution through its generic loop over the
    dilated input; a stride-1 1x1 convolution is a plain product both ways (on the CPU
    `conv_lowering` runs it as one; benchmarks/RESULTS.md, "Strided 1x1 convolutions").
    """

    def __init__(self, name: str, cin: int, filters: int, stride: int, project: bool, *, make: Layers):
        if stride > 1 and not project:  # the identity shortcut cannot subsample
            raise ValueError(f"{name}: a block with stride {stride} needs a projected shortcut")
        self.name = name
        self.stride = stride
        self.conv0 = make.conv(cin, 4 * filters, 1) if project else None
        self.bn0 = make.bn(4 * filters) if project else None
        self.conv1 = make.conv(cin, filters, 1)
        self.bn1 = make.bn(filters)
        self.conv2 = make.conv(filters, filters, 3, padding="SAME")
        self.bn2 = make.bn(filters)
        self.conv3 = make.conv(filters, 4 * filters, 1)
        self.bn3 = make.bn(4 * filters)

    def keras_layers(self) -> list[tuple[str, nnx.Module]]:
        n = self.name
        head = [
            (f"{n}_1_conv", self.conv1),
            (f"{n}_1_bn", self.bn1),
            (f"{n}_2_conv", self.conv2),
            (f"{n}_2_bn", self.bn2),
        ]
        if self.conv0 is None:
            return head + [(f"{n}_3_conv", self.conv3), (f"{n}_3_bn", self.bn3)]
        # Keras' topological order interleaves the two branches' last layers.
        return head + [
            (f"{n}_0_conv", self.conv0),
            (f"{n}_3_conv", self.conv3),
            (f"{n}_0_bn", self.bn0),
            (f"{n}_3_bn", self.bn3),
        ]

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.stride > 1:  # a projecting block (see __init__): both branches read these pixels
            x = x[:, :: self.stride, :: self.stride]
        shortcut = x if self.conv0 is None else self.bn0(self.conv0(x))
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return nnx.relu(shortcut + y)


class ResNet50(nnx.Module):
    """NHWC images -> the conv5 feature map (stride 32, 2048 channels)."""

    STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # filters, blocks, first stride

    def __init__(
        self,
        *,
        in_channels: int = 3,
        stem_stride: int = 2,  # the 7x7 stem convolution's stride (Keras: 2)
        stem_pool: bool = True,  # the 3x3 stride-2 max pool after the stem (Keras: True)
        zero_init_residual: bool = False,  # each block's last BatchNorm scale starts at 0 (Goyal et al.)
        conv_impl: str = "auto",  # auto | gather | taps | conv: see layers.conv_lowering
        bn_grad: str = "written",  # written | autodiff: see layers.BatchNorm
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        bn_axis_name: str | None = None,
        rngs: nnx.Rngs,
    ):
        make = Layers(
            rngs=rngs,
            dtype=dtype,
            param_dtype=param_dtype,
            bn_axis_name=bn_axis_name,
            bn_momentum=BN_MOMENTUM,
            bn_epsilon=BN_EPSILON,
            conv_bias=True,
            conv_padding="VALID",
            conv_impl=conv_impl,
            bn_grad=bn_grad,
        )
        if stem_stride not in (1, 2):
            raise ValueError(f"ResNet50 needs stem_stride 1 or 2, got {stem_stride}")
        self.stem_pool = bool(stem_pool)
        self.conv1 = make.conv(in_channels, 64, 7, strides=stem_stride)
        self.bn1 = make.bn(64)
        blocks, cin = [], 64
        for stage, (filters, n, stride) in enumerate(self.STAGES, start=2):
            for i in range(n):
                name = f"conv{stage}_block{i + 1}"
                blocks.append(Bottleneck(name, cin, filters, stride if i == 0 else 1, i == 0, make=make))
                cin = 4 * filters
        if zero_init_residual:  # every block starts as its shortcut: a shallow network at step 0
            for block in blocks:
                block.bn3.scale.set_value(jnp.zeros_like(block.bn3.scale.get_value()))
        self.blocks = nnx.List(blocks)
        self.num_features = cin

    def keras_layers(self) -> list[tuple[str, nnx.Module]]:
        layers = [("conv1_conv", self.conv1), ("conv1_bn", self.bn1)]
        for block in self.blocks:
            layers += block.keras_layers()
        return layers

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(zero_pad(x, 3))))
        if self.stem_pool:
            x = max_pool(zero_pad(x, 1), (3, 3), (2, 2))
        for block in self.blocks:
            x = block(x)
        return x


@register("resnet50", preprocess="caffe", keras_application="ResNet50")
def resnet50(**kwargs) -> ResNet50:
    return ResNet50(**kwargs)
