"""Name -> backbone builder registry, with the preprocessing each family expects."""

from __future__ import annotations

import dataclasses
import typing

import jax
from flax import nnx


@typing.runtime_checkable
class Backbone(typing.Protocol):
    """What `camjax.models.create` needs of a registered family's module.

    It maps a preprocessed float NHWC batch to an NHWC feature map with `num_features`
    channels (the classifier pools it and puts the head on top). A family whose layers follow
    Keras Applications also implements `KerasLayout`, which weight import walks.
    """

    num_features: int

    def __call__(self, x: jax.Array) -> jax.Array: ...


@typing.runtime_checkable
class KerasLayout(typing.Protocol):
    def keras_layers(self) -> list[tuple[str, nnx.Module]]:
        """(Keras layer name, module) for every layer with weights, in Keras' order."""
        ...


class BackboneBuilder(typing.Protocol):
    """A registered builder: these keywords always, plus the family's own (`alpha`,
    `stem_stride`, ...) from `config.model.kwargs`. `in_channels` is 3, or 3 * b * b behind
    a b x b space-to-depth (`config.model.space_to_depth`)."""

    def __call__(
        self, *, rngs: nnx.Rngs, dtype, param_dtype, bn_axis_name: str | None, in_channels: int = 3, **family
    ) -> Backbone: ...


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    name: str
    build: BackboneBuilder
    preprocess: str  # 'caffe' | 'torch' | 'tf', as in keras.applications' preprocess_input
    keras_application: str | None = None  # e.g. 'ResNet50', for weight import and parity tests


BACKBONES: dict[str, BackboneSpec] = {}


def register(name: str, *, preprocess: str, keras_application: str | None = None):
    """Decorator registering a backbone builder under `name`."""

    def wrap(build: BackboneBuilder) -> BackboneBuilder:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} registered twice")
        BACKBONES[name] = BackboneSpec(name, build, preprocess, keras_application)
        return build

    return wrap


def get(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(BACKBONES))}") from None
