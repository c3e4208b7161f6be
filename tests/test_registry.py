"""Every registered backbone keeps the contract `camjax.models.create` relies on
(`registry.Backbone`, and `registry.KerasLayout` where it imports Keras weights)."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from camjax.models import BACKBONES, registry

PATCH = 96  # every family's minimum (InceptionResNetV2 needs 75)


@pytest.mark.slow  # builds every family abstractly: about a minute on 2 cores
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_contract(name):
    """The builder keywords, 12 input channels (what a 2x2 space-to-depth gives it), an NHWC
    map with `num_features` channels, Keras' layer walk exactly where Keras weights exist."""
    spec = BACKBONES[name]
    backbone = nnx.eval_shape(
        lambda: spec.build(
            rngs=nnx.Rngs(0), dtype=jnp.float32, param_dtype=jnp.float32, bn_axis_name=None, in_channels=12
        )
    )
    assert isinstance(backbone, registry.Backbone)
    assert isinstance(backbone.num_features, int) and backbone.num_features > 0
    assert isinstance(backbone, registry.KerasLayout) == (spec.keras_application is not None)
    assert spec.preprocess in ("caffe", "torch", "tf")
    graphdef, state = nnx.split(backbone)
    x = jax.ShapeDtypeStruct((2, PATCH, PATCH, 12), jnp.float32)
    fmap = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
    assert fmap.ndim == 4 and fmap.shape[0] == 2 and fmap.shape[-1] == backbone.num_features
