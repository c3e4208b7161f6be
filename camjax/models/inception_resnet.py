"""Inception-ResNet-v2 backbone, layer for layer as keras.applications.InceptionResNetV2.

Same convolutions, 'valid'/'same' paddings, BatchNorms without scale (epsilon 1e-3,
momentum 0.99), biased 1x1 "up" convolutions and residual scales (0.17, 0.1, 0.2, last
block 1.0 without ReLU), so Keras ImageNet weights import exactly (`camjax.convert`).
Output: the 1536-channel NHWC map of conv_7b (include_top=False); inputs >= 75 px.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from camjax.models.layers import Layers, max_pool
from camjax.models.registry import register

MIN_SIZE = 75

# (filters, kernel, strides, padding) of one conv2d_bn unit; strides and padding optional.
Unit = tuple

_BLOCK35 = (((32, 1),), ((32, 1), (32, 3)), ((32, 1), (48, 3), (64, 3)))
_BLOCK17 = (((192, 1),), ((128, 1), (160, (1, 7)), (192, (7, 1))))
_BLOCK8 = (((192, 1),), ((192, 1), (224, (1, 3)), (256, (3, 1))))


class ConvBN(nnx.Module):
    """Keras' conv2d_bn: bias-free conv, BatchNorm with a shift but no scale, ReLU."""

    def __init__(self, cin: int, unit: Unit, make: Layers):
        filters, kernel, *rest = unit
        strides, padding = rest or (1, "SAME")
        kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        self.conv = make.conv(cin, filters, kernel, strides=strides, padding=padding)
        self.bn = make.bn(filters, use_scale=False)
        self.num_features = filters

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.bn(self.conv(x)))


class Branch(nnx.Module):
    """One branch of a mixed block: an optional 3x3 pooling, then a chain of ConvBN units.

    pool 'avg' is Keras' AveragePooling2D(3, strides=1, padding='same') (padding not
    counted); 'max' is MaxPooling2D(3, strides=2, padding='valid').
    """

    def __init__(self, cin: int, units: Sequence[Unit], make: Layers, *, pool: str | None = None):
        self.pool = pool
        chain = []
        for unit in units:
            chain.append(ConvBN(cin, unit, make))
            cin = chain[-1].num_features
        self.units = nnx.List(chain)
        self.num_features = cin

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.pool == "avg":
            x = nnx.avg_pool(x, (3, 3), strides=(1, 1), padding="SAME", count_include_pad=False)
        elif self.pool == "max":
            x = max_pool(x, (3, 3), (2, 2))
        for unit in self.units:
            x = unit(x)
        return x


def _auto_names(units: Sequence[ConvBN], counter: Iterator[int]) -> list[list[tuple[str, nnx.Module]]]:
    """Names Keras generates for unnamed conv2d_bn units, in creation order, in a fresh session."""
    out = []
    for unit in units:
        n = next(counter)
        suffix = f"_{n}" if n else ""
        out.append([(f"conv2d{suffix}", unit.conv), (f"batch_normalization{suffix}", unit.bn)])
    return out


def _graph_order(branches: Sequence[Branch], counter: Iterator[int]) -> list[tuple[str, nnx.Module]]:
    """The weighted layers of parallel branches in Keras' Functional order.

    Keras sorts layers by decreasing depth (operations between a layer and the model
    output), ties in traversal (= here creation) order. Within a block that ends in one
    concatenation, a unit followed by k more units in its branch has its conv at depth
    3k+3 and its BN at 3k+2 (each unit is conv, BN, ReLU), plus a constant.
    """
    entries = []
    for branch in branches:
        named = _auto_names(branch.units, counter)
        for i, ((conv_name, conv), (bn_name, bn)) in enumerate(named):
            k = len(named) - 1 - i
            entries += [(3 * k + 3, conv_name, conv), (3 * k + 2, bn_name, bn)]
    entries.sort(key=lambda e: -e[0])  # stable: ties keep creation order
    return [(name, module) for _, name, module in entries]


class Mixed(nnx.Module):
    """Parallel branches concatenated on channels (mixed_5b, mixed_6a, mixed_7a)."""

    def __init__(self, cin: int, branches: Sequence[tuple[Sequence[Unit], str | None]], make: Layers):
        self.branches = nnx.List([Branch(cin, units, make, pool=pool) for units, pool in branches])
        self.num_features = sum(b.num_features for b in self.branches)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([b(x) for b in self.branches], axis=-1)

    def keras_layers(self, counter: Iterator[int]) -> list[tuple[str, nnx.Module]]:
        return _graph_order(self.branches, counter)


class ResidualBlock(nnx.Module):
    """Inception-ResNet block: x + scale * up(concat(branches(x))), then an optional ReLU."""

    def __init__(self, cin: int, branches, scale: float, name: str, make: Layers, *, activation: bool = True):
        self.name = name
        self.scale = scale
        self.activation = activation
        self.branches = nnx.List([Branch(cin, units, make) for units in branches])
        mixed = sum(b.num_features for b in self.branches)
        self.up = make.conv(mixed, cin, 1, use_bias=True)
        self.num_features = cin

    def __call__(self, x: jax.Array) -> jax.Array:
        up = self.up(jnp.concatenate([b(x) for b in self.branches], axis=-1))
        x = x + up * self.scale
        return nnx.relu(x) if self.activation else x

    def keras_layers(self, counter: Iterator[int]) -> list[tuple[str, nnx.Module]]:
        return _graph_order(self.branches, counter) + [(f"{self.name}_conv", self.up)]


class InceptionResNetV2(nnx.Module):
    """Stem, mixed_5b, 10x block35, mixed_6a, 20x block17, mixed_7a, 10x block8, conv_7b."""

    def __init__(
        self,
        *,
        in_channels: int = 3,
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
            bn_momentum=0.99,
            bn_epsilon=1e-3,
            conv_impl=conv_impl,
            bn_grad=bn_grad,
        )
        stem = []
        c = in_channels
        for unit in ((32, 3, 2, "VALID"), (32, 3, 1, "VALID"), (64, 3), (80, 1, 1, "VALID"), (192, 3, 1, "VALID")):
            stem.append(ConvBN(c, unit, make))
            c = unit[0]
        self.stem = nnx.List(stem)
        self.mixed_5b = Mixed(
            c,
            [
                (((96, 1),), None),
                (((48, 1), (64, 5)), None),
                (((64, 1), (96, 3), (96, 3)), None),
                (((64, 1),), "avg"),
            ],
            make,
        )
        c = self.mixed_5b.num_features
        self.block35 = nnx.List([ResidualBlock(c, _BLOCK35, 0.17, f"block35_{i}", make) for i in range(1, 11)])
        self.mixed_6a = Mixed(
            c,
            [
                (((384, 3, 2, "VALID"),), None),
                (((256, 1), (256, 3), (384, 3, 2, "VALID")), None),
                ((), "max"),
            ],
            make,
        )
        c = self.mixed_6a.num_features
        self.block17 = nnx.List([ResidualBlock(c, _BLOCK17, 0.1, f"block17_{i}", make) for i in range(1, 21)])
        self.mixed_7a = Mixed(
            c,
            [
                (((256, 1), (384, 3, 2, "VALID")), None),
                (((256, 1), (288, 3, 2, "VALID")), None),
                (((256, 1), (288, 3), (320, 3, 2, "VALID")), None),
                ((), "max"),
            ],
            make,
        )
        c = self.mixed_7a.num_features
        self.block8 = nnx.List(
            [ResidualBlock(c, _BLOCK8, 0.2, f"block8_{i}", make) for i in range(1, 10)]
            + [ResidualBlock(c, _BLOCK8, 1.0, "block8_10", make, activation=False)]
        )
        self.conv_7b = ConvBN(c, (1536, 1), make)
        self.num_features = 1536

    def __call__(self, x: jax.Array) -> jax.Array:
        if min(x.shape[1:3]) < MIN_SIZE:
            raise ValueError(f"inception_resnet.py: input is {x.shape[1]}x{x.shape[2]}, needs >= {MIN_SIZE} px a side")
        for i, unit in enumerate(self.stem):
            x = unit(x)
            if i in (2, 4):
                x = max_pool(x, (3, 3), (2, 2))
        x = self.mixed_5b(x)
        for block in self.block35:
            x = block(x)
        x = self.mixed_6a(x)
        for block in self.block17:
            x = block(x)
        x = self.mixed_7a(x)
        for block in self.block8:
            x = block(x)
        return self.conv_7b(x)

    def keras_layers(self) -> list[tuple[str, nnx.Module]]:
        """(Keras layer name, module) in the order of the Keras model's weighted layers.

        Unnamed Keras layers get the names a fresh Keras session generates (conv2d_N,
        batch_normalization_N); `camjax.convert` matches those by order and shape only.
        """
        counter = itertools.count()
        out = [pair for unit in _auto_names(self.stem, counter) for pair in unit]
        out += self.mixed_5b.keras_layers(counter)
        for block in self.block35:
            out += block.keras_layers(counter)
        out += self.mixed_6a.keras_layers(counter)
        for block in self.block17:
            out += block.keras_layers(counter)
        out += self.mixed_7a.keras_layers(counter)
        for block in self.block8:
            out += block.keras_layers(counter)
        return out + [("conv_7b", self.conv_7b.conv), ("conv_7b_bn", self.conv_7b.bn)]


@register("inception_resnet_v2", preprocess="tf", keras_application="InceptionResNetV2")
def inception_resnet_v2(**kwargs) -> InceptionResNetV2:
    return InceptionResNetV2(**kwargs)
