"""DenseNet-121/169/201 backbones, layer for layer as keras.applications.DenseNet.

Same layers, names, paddings and BatchNorm settings (epsilon 1.001e-5, momentum 0.99), so
Keras ImageNet weights import exactly (`camjax.convert`). Output: the post-ReLU NHWC
feature map (include_top=False); inputs of any size >= 32, like Keras.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from camjax.models.layers import Layers, max_pool
from camjax.models.registry import register

_BN_EPSILON = 1.001e-5


class ConvBlock(nnx.Module):
    """BN-ReLU-1x1 conv (4k) - BN-ReLU-3x3 conv (k) on the concatenation of the block's feature
    maps so far (Keras' conv_block): returns the k new channels, which Keras concatenates to
    its input. The maps stay apart (`BatchNorm.relu_concat`)."""

    def __init__(self, cin: int, growth_rate: int, name: str, make: Layers):
        self.name = name
        self.bn0 = make.bn(cin)
        self.conv1 = make.conv(cin, 4 * growth_rate, 1)
        self.bn1 = make.bn(4 * growth_rate)
        self.conv2 = make.conv(4 * growth_rate, growth_rate, 3)

    def __call__(self, pieces: list[jax.Array], piece_moments: list) -> jax.Array:
        y = self.conv1(self.bn0.relu_concat(pieces, piece_moments))
        return self.conv2(nnx.relu(self.bn1(y)))

    def keras_layers(self) -> list[tuple[str, nnx.Module]]:
        n = self.name
        return [
            (f"{n}_0_bn", self.bn0),
            (f"{n}_1_conv", self.conv1),
            (f"{n}_1_bn", self.bn1),
            (f"{n}_2_conv", self.conv2),
        ]


class Transition(nnx.Module):
    """BN-ReLU-1x1 conv halving the channels, then 2x2 average pooling (Keras' transition_block)."""

    def __init__(self, cin: int, name: str, make: Layers):
        self.name = name
        self.num_features = cin // 2  # Keras: int(channels * 0.5)
        self.bn = make.bn(cin)
        self.conv = make.conv(cin, self.num_features, 1)

    def __call__(self, pieces: list[jax.Array], piece_moments: list) -> jax.Array:
        x = self.conv(self.bn.relu_concat(pieces, piece_moments))
        return nnx.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")

    def keras_layers(self) -> list[tuple[str, nnx.Module]]:
        return [(f"{self.name}_bn", self.bn), (f"{self.name}_conv", self.conv)]


class DenseNet(nnx.Module):
    """7x7/2 stem and 3x3/2 max pool, four dense blocks joined by transitions, final BN-ReLU."""

    def __init__(
        self,
        *,
        blocks: Sequence[int],
        growth_rate: int = 32,
        stem_stride: int = 2,  # the 7x7 stem convolution's stride (Keras: 2)
        stem_pool: bool = True,  # the 3x3 stride-2 max pool after the stem (Keras: True)
        in_channels: int = 3,
        conv_impl: str = "auto",  # auto | gather | taps | conv: see layers.conv_lowering
        bn_grad: str = "written",  # written | autodiff: see layers.BatchNorm
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        bn_axis_name: str | None = None,
        rngs: nnx.Rngs,
    ):
        if len(blocks) != 4:
            raise ValueError(f"densenet.py: blocks needs 4 dense-block lengths, got {tuple(blocks)}")
        make = Layers(
            rngs=rngs,
            dtype=dtype,
            param_dtype=param_dtype,
            bn_axis_name=bn_axis_name,
            bn_momentum=0.99,
            bn_epsilon=_BN_EPSILON,
            conv_impl=conv_impl,
            bn_grad=bn_grad,
        )
        if stem_stride not in (1, 2):
            raise ValueError(f"DenseNet needs stem_stride 1 or 2, got {stem_stride}")
        self.stem_pool = bool(stem_pool)  # neither option changes a weight's shape: ImageNet weights import
        self.conv1_conv = make.conv(in_channels, 64, 7, strides=stem_stride, padding=((3, 3), (3, 3)))
        self.conv1_bn = make.bn(64)
        stages = []
        c = 64
        for i, n in enumerate(blocks):
            stage = []
            for j in range(n):
                stage.append(ConvBlock(c, growth_rate, f"conv{i + 2}_block{j + 1}", make))
                c += growth_rate
            if i < 3:
                stage.append(Transition(c, f"pool{i + 2}", make))
                c = stage[-1].num_features
            stages.append(nnx.List(stage))
        self.stages = nnx.List(stages)
        self.bn = make.bn(c)
        self.num_features = c

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.conv1_bn(self.conv1_conv(x)))
        if self.stem_pool:  # Keras' ZeroPadding2D(1) before the 'valid' max pool.
            x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            x = max_pool(x, (3, 3), (2, 2))
        # A dense block's feature maps stay a list (`ConvBlock`), each with its BatchNorm
        # statistics, computed once: every later layer of the block normalises it again. Every
        # BatchNorm here shares the settings that decide them, so `self.bn` computes them all.
        pieces, piece_moments = [x], [self.bn.piece_moments(x)]
        for stage in self.stages:
            for layer in stage:
                y = layer(pieces, piece_moments)
                if isinstance(layer, Transition):
                    pieces, piece_moments = [], []
                pieces.append(y)
                piece_moments.append(self.bn.piece_moments(y))
        return self.bn.relu_concat(pieces, piece_moments)

    def keras_layers(self) -> list[tuple[str, nnx.Module]]:
        """(Keras layer name, module) in the order of the Keras model's weighted layers."""
        out = [("conv1_conv", self.conv1_conv), ("conv1_bn", self.conv1_bn)]
        for stage in self.stages:
            for layer in stage:
                out += layer.keras_layers()
        return out + [("bn", self.bn)]


@register("densenet121", preprocess="torch", keras_application="DenseNet121")
def densenet121(**kwargs) -> DenseNet:
    return DenseNet(blocks=(6, 12, 24, 16), **kwargs)


@register("densenet169", preprocess="torch", keras_application="DenseNet169")
def densenet169(**kwargs) -> DenseNet:
    return DenseNet(blocks=(6, 12, 32, 32), **kwargs)


@register("densenet201", preprocess="torch", keras_application="DenseNet201")
def densenet201(**kwargs) -> DenseNet:
    return DenseNet(blocks=(6, 12, 48, 32), **kwargs)
