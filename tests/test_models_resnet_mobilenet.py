"""ResNet50, MobileNet and MobileNetV2 against keras.applications: sizes, weights import, features."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from flax import nnx

from camjax import convert
from camjax.models import create, default_config, layers, mobilenet, registry, resnet

KERAS_PARAMS = {  # include_top=False, BatchNorm statistics included (docs/design.md)
    "resnet50": 23_587_712,
    "mobilenet": 3_228_864,
    "mobilenet_v2": 2_257_984,
}


def param_count(name, **kwargs):
    model = nnx.eval_shape(lambda: registry.get(name).build(rngs=nnx.Rngs(0), **kwargs))
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param, nnx.BatchStat)))


@pytest.mark.parametrize("name", sorted(KERAS_PARAMS))
def test_param_count_matches_keras(name):
    assert param_count(name) == KERAS_PARAMS[name]


@pytest.mark.parametrize(
    "name,alpha,keras_count",  # Keras' counts for these widths (include_top=False)
    [("mobilenet", 0.25, 218_544), ("mobilenet_v2", 0.35, 410_208), ("mobilenet_v2", 1.4, 4_363_712)],
)
def test_width_multiplier_rounds_like_keras(name, alpha, keras_count):
    assert param_count(name, alpha=alpha) == keras_count


@pytest.fixture(scope="module", autouse=True)
def numpy_keras_initialisers():
    """Keras (JAX backend) compiles a threefry kernel per weight shape when it initialises a model
    (~0.5 s each, 15 s for ResNet50); every weight that matters is set below, so numpy draws do."""
    from keras.src.backend.jax import random as keras_random

    rng = np.random.default_rng(0)

    def uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
        return rng.uniform(minval, maxval, shape).astype(dtype or "float32")

    def normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        return rng.normal(mean, stddev, shape).astype(dtype or "float32")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keras_random, "uniform", uniform)
        patch.setattr(keras_random, "normal", normal)
        patch.setattr(keras_random, "truncated_normal", normal)
        yield


def randomise(keras_model, seed=0):
    """Non-trivial BatchNorm statistics, gammas, betas and biases, so parity means something."""
    rng = np.random.default_rng(seed)
    for layer in keras_model.layers:
        for w in layer.weights:
            shape = tuple(w.shape)
            if w.name in ("moving_variance", "gamma"):
                w.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
            elif w.name in ("moving_mean", "beta", "bias"):
                w.assign(rng.normal(0, 0.2, shape).astype(np.float32))


def keras_backbone(app, input_shape=(None, None, 3), **kwargs):
    return getattr(keras.applications, app)(weights=None, include_top=False, input_shape=input_shape, **kwargs)


def abstract(name, **kwargs):
    """The backbone without running its initialisers (each would compile): weights come next."""
    return nnx.eval_shape(lambda: registry.get(name).build(rngs=nnx.Rngs(0), **kwargs))


def converted(name, keras_model, **kwargs):
    backbone = abstract(name, **kwargs)
    convert.copy_keras_weights(backbone, keras_model)
    backbone.eval()
    return backbone


def fill(backbone, seed=0):
    """Random parameters and positive variances, set from numpy (no per-shape compiles)."""
    rng = np.random.default_rng(seed)
    for path, var in nnx.iter_graph(backbone):
        if isinstance(var, (nnx.Param, nnx.BatchStat)):
            low = 0.5 if path[-1] in ("var", "scale") else -0.5
            value = rng.uniform(low, low + 1, var.shape) * (0.2 if path[-1] == "kernel" else 1)
            var.set_value(jnp.asarray(value.astype(np.dtype(var.dtype))))
    return backbone


def forward(backbone, x):
    graphdef, state = nnx.split(backbone)
    return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, jnp.asarray(x))


def assert_close(got, want, rtol=1e-4):
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < rtol, f"relative max error {err:.2e}"


@pytest.mark.parametrize(
    "name,app,kwargs,sizes",
    [
        ("resnet50", "ResNet50", {}, (64, 67)),
        ("mobilenet", "MobileNet", {"alpha": 0.25}, (64, 75)),
        ("mobilenet_v2", "MobileNetV2", {"alpha": 0.25}, (64, 75)),
    ],
)
def test_features_match_keras(name, app, kwargs, sizes):
    keras_model = keras_backbone(app, **kwargs)
    randomise(keras_model)
    backbone = converted(name, keras_model, **kwargs)
    for size in sizes:
        if name == "mobilenet_v2" and size % 2:  # Keras pads by the static size (correct_pad)
            sized = keras_backbone(app, (size, size, 3), **kwargs)
            sized.set_weights(keras_model.get_weights())
        else:
            sized = keras_model
        x = (
            np.random.default_rng(size)
            .normal(0, 50 if name == "resnet50" else 1, (2, size, size, 3))
            .astype(np.float32)
        )
        want = sized.predict(x, verbose=0)
        got = np.asarray(forward(backbone, x))
        assert got.shape == want.shape and got.shape[-1] == backbone.num_features
        assert_close(got.mean(axis=(1, 2)), want.mean(axis=(1, 2)))


def test_keras_layers_cover_every_variable():
    backbone = nnx.eval_shape(lambda: mobilenet.MobileNetV2(alpha=0.35, rngs=nnx.Rngs(0)))
    listed = {id(m) for _, m in backbone.keras_layers()}
    owners = {id(m) for _, m in nnx.iter_graph(backbone) if isinstance(m, (nnx.Conv, nnx.BatchNorm, nnx.Linear))}
    assert listed == owners


def test_copy_rejects_mismatched_width():
    keras_model = keras_backbone("MobileNet", alpha=0.25)
    backbone = abstract("mobilenet", alpha=0.5)
    with pytest.raises(ValueError, match=r"conv1.*shape"):
        convert.copy_keras_weights(backbone, keras_model)


def test_copy_skips_top_layers():
    keras_model = keras.applications.MobileNet(weights=None, include_top=True, alpha=0.25, input_shape=(32, 32, 3))
    randomise(keras_model)
    backbone = converted("mobilenet", keras_model, alpha=0.25)
    np.testing.assert_array_equal(
        np.asarray(backbone.blocks[-1].pw_bn.var[...]),
        np.asarray(keras_model.get_layer("conv_pw_13_bn").moving_variance),
    )


@pytest.mark.parametrize("family,mode", [("resnet50", "caffe"), ("mobilenet", "tf"), ("mobilenet_v2", "tf")])
def test_preprocess_matches_keras(family, mode):
    module = {
        "resnet50": keras.applications.resnet50,
        "mobilenet": keras.applications.mobilenet,
        "mobilenet_v2": keras.applications.mobilenet_v2,
    }[family]
    assert registry.get(family).preprocess == mode
    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 7, 3)).astype(np.float32)
    want = np.asarray(module.preprocess_input(x.copy()))
    np.testing.assert_allclose(np.asarray(layers.preprocess(jnp.asarray(x), mode)), want, rtol=1e-6, atol=1e-4)


def test_bfloat16_forward_close_to_float32():
    f32 = fill(abstract("mobilenet_v2", alpha=0.25))
    bf16 = abstract("mobilenet_v2", alpha=0.25, dtype=jnp.bfloat16)
    nnx.update(bf16, nnx.state(f32))
    f32.eval(), bf16.eval()
    x = np.random.default_rng(0).normal(size=(2, 40, 40, 3)).astype(np.float32)
    got = forward(bf16, x)
    assert got.dtype == jnp.bfloat16
    assert_close(np.asarray(got, np.float32).mean(axis=(1, 2)), np.asarray(forward(f32, x)).mean(axis=(1, 2)), 5e-2)


def test_resnet_batchnorm_modes_and_odd_sizes():
    """Train mode normalises by batch statistics and moves the moving ones; eval mode uses them."""
    model = fill(abstract("resnet50"))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 33, 35, 3)).astype(np.float32))
    before = np.asarray(model.bn1.mean[...])
    model.eval()
    assert forward(model, x).shape == (2, 2, 2, 2048)  # 33: 17, 9, 5, 3, 2
    np.testing.assert_array_equal(np.asarray(model.bn1.mean[...]), before)
    model.train()
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, x):
        model = nnx.merge(graphdef, state)
        model(x)
        return nnx.state(model)

    nnx.update(model, step(state, x))
    mean = model.bn1.mean[...]
    batch_mean = np.asarray(model.conv1(jnp.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))).mean(axis=(0, 1, 2)))
    np.testing.assert_allclose(np.asarray(mean), 0.99 * before + 0.01 * batch_mean, rtol=1e-4, atol=1e-5)


def test_models_table_counts_and_flops():
    from camjax.models import __main__ as table

    classifier = nnx.eval_shape(lambda: create(default_config("mobilenet"), 10))
    assert table.count(classifier.backbone) == KERAS_PARAMS["mobilenet"]
    head = (1024 + 1) * 512 + 512 + 513 * 256 + 256 * 10 + 10 + 256 * 9 + 9  # FC 512, 256, classes, aux
    assert table.count(classifier) == KERAS_PARAMS["mobilenet"] + head
    # MobileNet: 569 M multiply-adds at 224x224 (its paper), so ~2 * 569e6 * (512 / 224) ** 2 flops.
    assert 5.5 < table.gflops(classifier) < 6.5


@pytest.mark.parametrize(
    "name,kwargs,size,stock_hw,options_hw",
    [  # 32 px: the stock stems reach stride 32 (1x1); without their downsampling, stride 8 or 16
        ("resnet50", dict(stem_stride=1, stem_pool=False), 32, 1, 4),
        ("mobilenet", dict(alpha=0.25, stem_stride=1), 32, 1, 2),
        ("mobilenet_v2", dict(alpha=0.35, stem_stride=1), 32, 1, 2),
    ],
)
def test_stem_options_keep_weight_shapes_and_remove_downsampling(name, kwargs, size, stock_hw, options_hw):
    """stem_stride / stem_pool change strides only: the same weights (ImageNet conv1 included) load."""
    stock_kwargs = {k: v for k, v in kwargs.items() if k == "alpha"}
    stock, changed = abstract(name, **stock_kwargs), abstract(name, **kwargs)
    shapes = lambda m: jax.tree.map(lambda v: v.shape, nnx.state(m, nnx.Param, nnx.BatchStat))  # noqa: E731
    assert shapes(stock) == shapes(changed)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    for model, hw in ((stock, stock_hw), (changed, options_hw)):
        graphdef, state = nnx.split(model)
        out = jax.eval_shape(lambda s, x, graphdef=graphdef: nnx.merge(graphdef, s)(x), state, x)
        assert out.shape[1:3] == (hw, hw)
    with pytest.raises(ValueError, match="stem_stride"):
        abstract(name, **stock_kwargs, stem_stride=3)


def test_stem_stride_one_imports_keras_weights():
    keras_model = keras_backbone("MobileNet", alpha=0.25)
    randomise(keras_model)
    backbone = converted("mobilenet", keras_model, alpha=0.25, stem_stride=1)
    np.testing.assert_array_equal(
        np.asarray(backbone.conv1.kernel[...]), np.asarray(keras_model.get_layer("conv1").kernel)
    )


@pytest.mark.parametrize("name,kwargs", [("resnet50", {}), ("mobilenet_v2", {"alpha": 0.35})])
def test_zero_init_residual_starts_blocks_as_their_shortcuts(name, kwargs):
    model = registry.get(name).build(rngs=nnx.Rngs(0), zero_init_residual=True, **kwargs)
    if name == "resnet50":
        assert len(model.blocks) == 16 and all((np.asarray(b.bn3.scale[...]) == 0).all() for b in model.blocks)
    else:
        residual = [b for b in model.blocks if b.residual]
        assert residual and all((np.asarray(b.project_bn.scale[...]) == 0).all() for b in residual)
        assert all((np.asarray(b.project_bn.scale[...]) == 1).all() for b in model.blocks if not b.residual)


def test_strided_bottleneck_equals_strided_convolutions_in_value_and_gradients():
    """The block subsamples once and runs its 1x1 convolutions at stride 1: exactly what the
    strided 1x1 convolutions of Keras' block compute, forward and backward, on odd sizes too."""
    make = layers.Layers(rngs=nnx.Rngs(0), conv_bias=True, conv_padding="VALID", bn_epsilon=resnet.BN_EPSILON)
    block = fill(resnet.Bottleneck("conv3_block1", 8, 4, 2, True, make=make))
    block.eval()

    def strided(conv, x):  # Keras' Conv2D(kernel 1, strides 2)
        dims = ("NHWC", "HWIO", "NHWC")
        return (
            jax.lax.conv_general_dilated(x, conv.kernel[...], (2, 2), "VALID", dimension_numbers=dims) + conv.bias[...]
        )

    def reference(b, x):
        y = nnx.relu(b.bn1(strided(b.conv1, x)))
        y = b.bn3(b.conv3(nnx.relu(b.bn2(b.conv2(y)))))
        return nnx.relu(b.bn0(strided(b.conv0, x)) + y)

    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 11, 8)).astype(np.float32))
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 6, 16)).astype(np.float32))
    loss = lambda f: lambda b, x: (f(b, x) * cotangent).sum()  # noqa: E731
    got = nnx.grad(loss(lambda b, x: b(x)), argnums=(0, 1))(block, x)
    want = nnx.grad(loss(reference), argnums=(0, 1))(block, x)
    np.testing.assert_allclose(np.asarray(block(x)), np.asarray(reference(block, x)), rtol=1e-5, atol=1e-5)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="projected shortcut"):
        resnet.Bottleneck("conv3_block2", 16, 4, 2, False, make=make)


def test_resnet_train_step_has_no_convolution_over_a_dilated_input():
    """A strided convolution's input gradient is a convolution over the gradient dilated by the
    stride (`lhs_dilate`), which XLA:CPU leaves to its generic loop; ResNet50 has none, also
    where every layer stays an XLA convolution (`conv_impl='conv'`, as on a GPU)."""
    graphdef, state = nnx.split(abstract("resnet50", conv_impl="conv"))
    loss = lambda state, x: nnx.merge(graphdef, state)(x).sum()  # noqa: E731
    hlo = jax.jit(jax.grad(loss)).lower(state, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)).compile().as_text()
    assert "convolution(" in hlo and "lhs_dilate" not in hlo.replace("lhs_dilate=1x1", "")


def test_resnet_train_step_on_the_cpu_takes_the_product_where_it_wins():
    """At patch 64, batch 2, with `conv_impl='auto'` every 1x1 convolution, the last stage's 3x3
    ones (their kernel overhangs the 2x2 maps, where XLA:CPU's convolution is about 36x slower
    than the product), the third stage's (256 channels over 2x4x4 positions) and the 7x7 stem
    (over the image's 3 channels) are matrix products; the other 3x3 ones stay convolutions:
    forward and both gradients. At patch 224, batch 4, the first two stages' 3x3 layers take
    their kernel gradients in runs of the batch: four of one image, then two of two; at patch
    512 in bands of each image's rows."""

    def gradient(batch=2, patch=64, **kwargs) -> str:
        graphdef, state = nnx.split(abstract("resnet50", **kwargs))
        loss = lambda state, x: nnx.merge(graphdef, state)(x).sum()  # noqa: E731
        return str(jax.make_jaxpr(jax.grad(loss))(state, jax.ShapeDtypeStruct((batch, patch, patch, 3), jnp.float32)))

    narrow_three_by_three = 3 + 4  # the conv2 and conv3 blocks (64 and 128 channels)
    assert gradient().count("conv_general_dilated[") == 3 * narrow_three_by_three
    assert gradient(conv_impl="conv").count("conv_general_dilated[") == 2 + 3 * (16 * 3 + 4)  # 16 blocks, 4 projections
    at_224 = gradient(batch=4, patch=224)
    # forward and input gradient, then one kernel gradient a run; the conv4 blocks' six whole
    assert at_224.count("conv_general_dilated[") == 3 * (2 + 4) + 4 * (2 + 2) + 6 * 3
    # at patch 512, batch 2, one image outgrows the budget in the first two stages: four bands of
    # its rows, then two; the third stage's images (2 MiB each) go one a run; the last stage's
    # 16x16 maps are whole, and no longer few enough positions to be products
    at_512 = gradient(batch=2, patch=512).count("conv_general_dilated[")
    assert at_512 == 3 * (2 + 2 * 4) + 4 * (2 + 2 * 2) + 6 * (2 + 2) + 3 * 3
