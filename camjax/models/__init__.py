"""Model registry: `create` builds a classifier from a config; importing registers every family."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from camjax.models import (
    camnet,  # noqa: F401  (registers)
    densenet,  # noqa: F401  (registers)
    inception_resnet,  # noqa: F401  (registers)
    mobilenet,  # noqa: F401  (registers)
    resnet,  # noqa: F401  (registers)
)
from camjax.models.head import Classifier, FlagHead
from camjax.models.layers import preprocess
from camjax.models.pretrained import load
from camjax.models.registry import BACKBONES, BackboneSpec, get, register

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_from_name(name: str):
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}") from None


def set_batchnorm_momentum(module: nnx.Module, momentum: float) -> None:
    """Sets every BatchNorm's running-average momentum.

    Keras' 0.99 suits fine-tuning for many thousands of steps. Trained from scratch for a
    few hundred, the running statistics still lag the weights, and inference, which uses
    them, stays at chance while training fits (measured: benchmarks/RESULTS.md).
    """
    if not 0.0 < momentum < 1.0:
        raise ValueError(f"model.bn_momentum must be in (0, 1), got {momentum}")
    for _, layer in nnx.iter_modules(module):
        if isinstance(layer, nnx.BatchNorm):
            layer.momentum = momentum


def default_config(name: str):
    """The model section of camjax/defaults.py for backbone `name`, with the family's own
    keyword defaults (for camnet, the full-size `configs/camnet.py` widths)."""
    from camjax import defaults

    config = defaults.get_config().model
    get(name)  # an unknown name fails here, naming the registered ones
    config.name = name
    return config


def create(
    model_config,
    num_classes: int,
    *,
    dtype: str = "float32",
    bn_axis_name: str | None = None,
    seed: int = 0,
) -> Classifier:
    """Builds the classifier described by `config.model` (name, kwargs, highpass and its clip,
    pooling, jpeg_trace, head)."""
    spec = get(model_config.name)
    rngs = nnx.Rngs(seed)
    compute = dtype_from_name(dtype)
    block = int(model_config.get("space_to_depth", 1) or 1)
    kwargs = dict(model_config.get("kwargs", {}))
    if block > 1:  # the backbone's first convolution sees the block x block phases as channels
        kwargs["in_channels"] = 3 * block * block
    backbone = spec.build(rngs=rngs, dtype=compute, param_dtype=jnp.float32, bn_axis_name=bn_axis_name, **kwargs)
    momentum = float(model_config.get("bn_momentum", 0.0) or 0.0)
    if momentum:
        set_batchnorm_momentum(backbone, momentum)
    return Classifier(
        backbone,
        num_classes,
        highpass=model_config.get("highpass", "none"),
        highpass_clip=float(model_config.get("highpass_clip", 0.0) or 0.0),
        space_to_depth=block,
        pooling=model_config.get("pooling", "avg"),
        jpeg_trace=int(model_config.get("jpeg_trace", 0) or 0),
        pixel_mode=spec.preprocess,
        head_kwargs=dict(model_config.get("head", {})),
        dtype=compute,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "Classifier",
    "FlagHead",
    "create",
    "default_config",
    "dtype_from_name",
    "get",
    "load",
    "preprocess",
    "register",
    "set_batchnorm_momentum",
]
