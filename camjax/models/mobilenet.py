"""MobileNet (v1) and MobileNetV2, layer for layer as keras.applications (include_top=False).

Faithful to Keras so ImageNet weights import exactly: bias-free convolutions, BatchNorm
epsilon 1e-3 (momentum 0.99 in v1, 0.999 in v2), ReLU6, the width multiplier `alpha`
rounded as Keras rounds it, and Keras' asymmetric zero padding before each stride-2
depthwise convolution (v1 always pads bottom/right by one; v2 pads as `correct_pad` does
for the input's actual size, which equals TensorFlow's 'SAME').

`stem_stride=1` makes the first 3x3 convolution stride 1 (Keras: 2), which keeps the
pixel-scale traces a camera leaves at full resolution into the first blocks; it changes no
weight's shape, so ImageNet weights still import.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from camjax.models.layers import Layers
from camjax.models.registry import register


def relu6(x: jax.Array) -> jax.Array:
    return jnp.clip(x, 0, 6)


def pad_hw(x: jax.Array, top: int, bottom: int, left: int, right: int) -> jax.Array:
    """keras.layers.ZeroPadding2D(((top, bottom), (left, right))) on NHWC."""
    return jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))


def make_divisible(v: float, divisor: int = 8) -> int:
    """Keras' `_make_divisible`: nearest multiple of `divisor`, never more than 10% below v."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def depthwise(make: Layers, channels: int, multiplier: int, stride: int) -> nnx.Conv:
    """A 3x3 depthwise convolution; 'SAME' at stride 1, 'VALID' after explicit padding at stride 2."""
    return make.conv(
        channels,
        channels * multiplier,
        3,
        strides=stride,
        padding="SAME" if stride == 1 else "VALID",
        feature_group_count=channels,
    )


class DepthwiseSeparable(nnx.Module):
    """Keras' `_depthwise_conv_block`: depthwise 3x3 + BN + ReLU6, pointwise 1x1 + BN + ReLU6."""

    def __init__(self, block_id: int, cin: int, cout: int, multiplier: int, stride: int, *, make: Layers):
        self.block_id = block_id
        self.stride = stride
        self.dw = depthwise(make, cin, multiplier, stride)
        self.dw_bn = make.bn(cin * multiplier)
        self.pw = make.conv(cin * multiplier, cout, 1)
        self.pw_bn = make.bn(cout)

    def keras_layers(self) -> list[tuple[str, nnx.Module]]:
        i = self.block_id
        return [
            (f"conv_dw_{i}", self.dw),
            (f"conv_dw_{i}_bn", self.dw_bn),
            (f"conv_pw_{i}", self.pw),
            (f"conv_pw_{i}_bn", self.pw_bn),
        ]

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.stride == 2:
            x = pad_hw(x, 0, 1, 0, 1)
        x = relu6(self.dw_bn(self.dw(x)))
        return relu6(self.pw_bn(self.pw(x)))


class MobileNet(nnx.Module):
    """NHWC images -> the conv_pw_13 feature map (stride 32, int(1024 * alpha) channels)."""

    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)) + ((512, 1),) * 5 + ((1024, 2), (1024, 1))

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        depth_multiplier: int = 1,
        depthwise_impl: str = "auto",  # auto | shifts | conv: see layers.conv_lowering
        conv_impl: str = "auto",  # auto | gather | taps | conv: see layers.conv_lowering
        bn_grad: str = "written",  # written | autodiff: see layers.BatchNorm
        stem_stride: int = 2,  # the first convolution's stride (Keras: 2)
        in_channels: int = 3,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        bn_axis_name: str | None = None,
        rngs: nnx.Rngs,
    ):
        if alpha <= 0 or depth_multiplier < 1:
            raise ValueError(f"MobileNet needs alpha > 0 and depth_multiplier >= 1, got {alpha}, {depth_multiplier}")
        make = Layers(
            rngs=rngs,
            dtype=dtype,
            param_dtype=param_dtype,
            bn_axis_name=bn_axis_name,
            bn_momentum=0.99,
            bn_epsilon=1e-3,
            depthwise_impl=depthwise_impl,
            conv_impl=conv_impl,
            bn_grad=bn_grad,
        )
        cin = int(32 * alpha)
        if stem_stride not in (1, 2):
            raise ValueError(f"{type(self).__name__} needs stem_stride 1 or 2, got {stem_stride}")
        self.conv1 = make.conv(in_channels, cin, 3, strides=stem_stride, padding="SAME")
        self.conv1_bn = make.bn(cin)
        blocks = []
        for block_id, (filters, stride) in enumerate(self.BLOCKS, start=1):
            cout = int(filters * alpha)
            blocks.append(DepthwiseSeparable(block_id, cin, cout, depth_multiplier, stride, make=make))
            cin = cout
        self.blocks = nnx.List(blocks)
        self.num_features = cin

    def keras_layers(self) -> list[tuple[str, nnx.Module]]:
        layers = [("conv1", self.conv1), ("conv1_bn", self.conv1_bn)]
        for block in self.blocks:
            layers += block.keras_layers()
        return layers

    def __call__(self, x: jax.Array) -> jax.Array:
        x = relu6(self.conv1_bn(self.conv1(x)))
        for block in self.blocks:
            x = block(x)
        return x


class InvertedResidual(nnx.Module):
    """Keras' `_inverted_res_block`: 1x1 expand, 3x3 depthwise, linear 1x1 projection (+ identity)."""

    def __init__(self, block_id: int, cin: int, cout: int, expansion: int, stride: int, *, make: Layers):
        self.prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
        self.stride = stride
        self.residual = cin == cout and stride == 1
        hidden = cin * expansion if block_id else cin
        self.expand = make.conv(cin, hidden, 1) if block_id else None
        self.expand_bn = make.bn(hidden) if block_id else None
        self.dw = depthwise(make, hidden, 1, stride)
        self.dw_bn = make.bn(hidden)
        self.project = make.conv(hidden, cout, 1)
        self.project_bn = make.bn(cout)

    def keras_layers(self) -> list[tuple[str, nnx.Module]]:
        p = self.prefix
        expand = [] if self.expand is None else [(f"{p}expand", self.expand), (f"{p}expand_BN", self.expand_bn)]
        return expand + [
            (f"{p}depthwise", self.dw),
            (f"{p}depthwise_BN", self.dw_bn),
            (f"{p}project", self.project),
            (f"{p}project_BN", self.project_bn),
        ]

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x if self.expand is None else relu6(self.expand_bn(self.expand(x)))
        if self.stride == 2:  # Keras' correct_pad(x, 3) for the actual size
            h, w = y.shape[1:3]
            y = pad_hw(y, h % 2, 1, w % 2, 1)
        y = relu6(self.dw_bn(self.dw(y)))
        y = self.project_bn(self.project(y))
        return x + y if self.residual else y


class MobileNetV2(nnx.Module):
    """NHWC images -> the out_relu feature map (stride 32, 1280 channels, more when alpha > 1)."""

    BLOCKS = (  # filters, expansion, stride, repeats
        (16, 1, 1, 1),
        (24, 6, 2, 2),
        (32, 6, 2, 3),
        (64, 6, 2, 4),
        (96, 6, 1, 3),
        (160, 6, 2, 3),
        (320, 6, 1, 1),
    )

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        depthwise_impl: str = "auto",  # auto | shifts | conv: see layers.conv_lowering
        conv_impl: str = "auto",  # auto | gather | taps | conv: see layers.conv_lowering
        bn_grad: str = "written",  # written | autodiff: see layers.BatchNorm
        stem_stride: int = 2,  # the first convolution's stride (Keras: 2)
        zero_init_residual: bool = False,  # residual blocks' projection BatchNorm scale starts at 0
        in_channels: int = 3,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        bn_axis_name: str | None = None,
        rngs: nnx.Rngs,
    ):
        if alpha <= 0:
            raise ValueError(f"MobileNetV2 needs alpha > 0, got {alpha}")
        make = Layers(
            rngs=rngs,
            dtype=dtype,
            param_dtype=param_dtype,
            bn_axis_name=bn_axis_name,
            bn_momentum=0.999,
            bn_epsilon=1e-3,
            depthwise_impl=depthwise_impl,
            conv_impl=conv_impl,
            bn_grad=bn_grad,
        )
        cin = make_divisible(32 * alpha)
        if stem_stride not in (1, 2):
            raise ValueError(f"{type(self).__name__} needs stem_stride 1 or 2, got {stem_stride}")
        self.conv1 = make.conv(in_channels, cin, 3, strides=stem_stride, padding="SAME")
        self.conv1_bn = make.bn(cin)
        blocks = []
        for filters, expansion, stride, repeats in self.BLOCKS:
            cout = make_divisible(int(filters * alpha))
            for i in range(repeats):
                blocks.append(InvertedResidual(len(blocks), cin, cout, expansion, stride if i == 0 else 1, make=make))
                cin = cout
        if zero_init_residual:  # each residual block starts as the identity (an init: imports replace it)
            for block in blocks:
                if block.residual:
                    block.project_bn.scale.set_value(jnp.zeros_like(block.project_bn.scale.get_value()))
        self.blocks = nnx.List(blocks)
        self.num_features = make_divisible(1280 * alpha) if alpha > 1.0 else 1280
        self.conv_last = make.conv(cin, self.num_features, 1)
        self.conv_last_bn = make.bn(self.num_features)

    def keras_layers(self) -> list[tuple[str, nnx.Module]]:
        layers = [("Conv1", self.conv1), ("bn_Conv1", self.conv1_bn)]
        for block in self.blocks:
            layers += block.keras_layers()
        return layers + [("Conv_1", self.conv_last), ("Conv_1_bn", self.conv_last_bn)]

    def __call__(self, x: jax.Array) -> jax.Array:
        x = relu6(self.conv1_bn(self.conv1(x)))
        for block in self.blocks:
            x = block(x)
        return relu6(self.conv_last_bn(self.conv_last(x)))


@register("mobilenet", preprocess="tf", keras_application="MobileNet")
def mobilenet(**kwargs) -> MobileNet:
    return MobileNet(**kwargs)


@register("mobilenet_v2", preprocess="tf", keras_application="MobileNetV2")
def mobilenet_v2(**kwargs) -> MobileNetV2:
    return MobileNetV2(**kwargs)
