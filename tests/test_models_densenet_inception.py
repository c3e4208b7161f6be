"""DenseNet and InceptionResNetV2 backbones against keras.applications (JAX backend)."""

import functools
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from flax import nnx

from camjax.convert import copy_keras_weights
from camjax.models import densenet, get

# Keras' count_params(), include_top=False, BatchNorm statistics included.
KERAS_PARAMS = {
    "densenet121": 7_037_504,
    "densenet169": 12_642_880,
    "densenet201": 18_321_984,
    "inception_resnet_v2": 54_336_736,
}


@functools.cache
def _abstract(name):
    return nnx.eval_shape(lambda: get(name).build(rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("name", sorted(KERAS_PARAMS))
def test_param_count_matches_keras(name):
    model = _abstract(name)
    assert sum(x.size for x in jax.tree.leaves(nnx.state(model))) == KERAS_PARAMS[name]


def _keras_model(name):
    """A fresh-session Keras application with random weights and random BatchNorm statistics."""
    keras.backend.clear_session()
    app = getattr(keras.applications, get(name).keras_application)
    model = app(include_top=False, weights=None, input_shape=(None, None, 3))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.5, 1.5, c))
            layer.beta.assign(rng.normal(0.0, 0.2, c))
            layer.moving_mean.assign(rng.normal(0.0, 0.2, c))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, c))
    return model


@pytest.fixture(scope="module", params=["densenet121", "inception_resnet_v2"])
def pair(request):
    """(name, Keras model, camjax backbone holding the same weights, in eval mode)."""
    name = request.param
    keras_model = _keras_model(name)
    graphdef, state = nnx.split(_abstract(name))  # every weight comes from Keras: skip the init
    backbone = nnx.merge(graphdef, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state))
    copy_keras_weights(backbone, keras_model)
    backbone.eval()
    return name, keras_model, backbone


SIZES = {"densenet121": ((2, 32), (2, 45)), "inception_resnet_v2": ((1, 75), (1, 83))}


def _pooled(backbone, x):
    graphdef, state = nnx.split(backbone)
    return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x).mean(axis=(1, 2)))(state, x)


@pytest.mark.slow  # one test per model: the Keras model is built once per worker that needs it
def test_layers_and_features_match_keras(pair):
    """Layer names (auto names included: fresh session), kinds and shapes, position by position;
    then the pooled features at two input sizes."""
    name, keras_model, backbone = pair
    keras_layers = [layer for layer in keras_model.layers if layer.weights]
    ours = backbone.keras_layers()
    assert [layer_name for layer_name, _ in ours] == [layer.name for layer in keras_layers]
    for (_, module), layer in zip(ours, keras_layers):
        theirs = [tuple(w.shape) for w in layer.weights]
        if isinstance(module, nnx.Conv):
            mine = [module.kernel.shape] + ([module.bias.shape] if module.bias is not None else [])
        else:
            mine = [v.shape for v in (module.scale, module.bias, module.mean, module.var) if v is not None]
        assert mine == theirs, layer.name

    for batch, size in SIZES[name]:
        x = np.random.default_rng(size).normal(size=(batch, size, size, 3)).astype(np.float32)
        ref = np.asarray(keras_model.predict(x, verbose=0)).mean(axis=(1, 2))
        ours = np.asarray(_pooled(backbone, jnp.asarray(x)))
        assert ours.shape == (batch, backbone.num_features)
        assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4, (name, size)


def test_densenet_growth_layers_on_the_cpu_are_products_of_their_taps_forward():
    """At patch 224, batch 4, `conv_impl='auto'` runs DenseNet121's 3x3 growth layers (128 -> 32)
    on the 56x56, 28x28 and 14x14 maps (6 + 12 + 24 of its 58) as `layers.taps_product_conv`;
    the 7x7 ones (196 positions) stay XLA convolutions, and the stem is the product of its
    gathered taps (a kernel over the image's 3 channels). The stem's max pool is
    `layers.max_pool`'s slices. Every BatchNorm on a dense block's feature maps takes them
    apart (`relu_concat`): the 58 growth layers' first, the 3 transitions' and the last."""
    graphdef, state = nnx.split(_abstract("densenet121"))
    loss = lambda state, x: nnx.merge(graphdef, state)(x).sum()  # noqa: E731
    images = jax.ShapeDtypeStruct((4, 224, 224, 3), jnp.float32)
    forward = str(jax.make_jaxpr(loss)(state, images))
    assert forward.count("fwd=_taps_product_conv_fwd") == 6 + 12 + 24
    assert forward.count("fwd=_batch_norm_train_fwd") == 1 + 58  # the stem's, the growth layers' second
    assert forward.count("fwd=_bn_relu_concat_fwd") == 58 + 3 + 1
    assert forward.count("conv_general_dilated[") == 16  # the last block's growth layers
    assert forward.count("fwd=_shifted_max_fwd") == 1 and "reduce_window_max" not in forward


def test_training_gradients_equal_flax_batchnorm_on_each_concatenation():
    """Training mode, a short DenseNet: its feature maps kept apart (`BatchNorm.relu_concat`)
    against the same weights with flax's BatchNorm on every concatenation under autodiff
    (`bn_grad='autodiff'`): the same loss, running statistics and gradients, to rounding."""

    def fit(bn_grad):
        model = densenet.DenseNet(blocks=(2, 3, 1, 1), bn_grad=bn_grad, rngs=nnx.Rngs(0))
        graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 64, 64, 3)), jnp.float32)
        weights = jnp.asarray(np.random.default_rng(1).normal(size=(4, 2, 2, model.num_features)), jnp.float32)

        def loss(params, stats):
            model = nnx.merge(graphdef, params, stats, copy=True)
            return jnp.vdot(model(x), weights), nnx.state(model, nnx.BatchStat)

        (value, stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, stats)
        return value, jax.tree.leaves(grads), jax.tree.leaves(stats), str(jax.make_jaxpr(loss)(params, stats))

    ours, theirs = fit("written"), fit("autodiff")
    assert ours[3].count("_bn_relu_concat_fwd") == 2 + 3 + 1 + 1 + 3 + 1 and "_bn_relu_concat_fwd" not in theirs[3]
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-5)
    for name, a, b in (("gradients", ours[1], theirs[1]), ("statistics", ours[2], theirs[2])):
        scale = max(float(np.abs(np.asarray(t)).max()) for t in b)
        for u, v in zip(a, b):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-3, atol=1e-4 * scale, err_msg=name)


def test_bfloat16_forward_close_to_float32():
    """bf16 compute with f32 params, on a short DenseNet (same modules, cheap compile)."""

    def build(dtype):
        return densenet.DenseNet(blocks=(1, 1, 1, 1), dtype=dtype, param_dtype=jnp.float32, rngs=nnx.Rngs(0))

    f32 = nnx.jit(build, static_argnums=0)(jnp.float32)  # one compile instead of one per layer shape
    bf16 = nnx.eval_shape(lambda: build(jnp.bfloat16))
    nnx.update(bf16, nnx.state(f32))
    f32.eval()
    bf16.eval()
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 45, 45, 3)), jnp.float32)
    ref = np.asarray(_pooled(f32, x))
    low = _pooled(bf16, x)
    assert low.dtype == jnp.bfloat16
    assert np.abs(np.asarray(low, np.float32) - ref).max() / np.abs(ref).max() < 5e-2


def test_inception_resnet_bfloat16_compute_keeps_float32_params():
    model = nnx.eval_shape(lambda: get("inception_resnet_v2").build(rngs=nnx.Rngs(0), dtype=jnp.bfloat16))
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model))} == {jnp.dtype(jnp.float32)}
    model.eval()  # train-mode BatchNorm updates make abstract tracing much slower
    graphdef, state = nnx.split(model)
    out = jax.eval_shape(
        lambda s, x: nnx.merge(graphdef, s)(x), state, jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32)
    )
    assert out.dtype == jnp.bfloat16 and out.shape == (1, 1, 1, 1536)


def test_inception_resnet_rejects_small_inputs():
    model = _abstract("inception_resnet_v2")
    with pytest.raises(ValueError, match="needs >= 75"):
        model(jnp.zeros((1, 74, 80, 3)))
