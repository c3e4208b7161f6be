"""Name -> backbone builder registry, with the preprocessing each family expects."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from flax import nnx

# A builder takes keyword arguments (rngs, dtype, param_dtype, bn_axis_name, plus
# family-specific ones such as alpha) and returns an nnx.Module mapping an NHWC float
# batch to an NHWC feature map, with an int attribute `num_features`.
BackboneBuilder = Callable[..., nnx.Module]


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
