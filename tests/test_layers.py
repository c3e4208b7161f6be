"""The forensic input layers and the convolution lowerings against references (lax, scipy)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from scipy import ndimage

from camjax import models
from camjax.models import layers


def lax_depthwise(x, kernel, strides, padding):
    return jax.lax.conv_general_dilated(
        x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1]
    )


def assert_equal_in_value_and_gradients(conv, reference, x, kernel, strides, padding, rng):
    """conv equals reference in its output and in both gradients of a loss that weighs every output."""
    want = reference(x, kernel, strides, padding)
    got = conv(x, kernel, strides, padding)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    weights = jnp.asarray(rng.normal(size=want.shape), jnp.float32)

    def loss(fn):
        return lambda x, kernel: jnp.sum(fn(x, kernel, strides, padding) * weights)

    for got_grad, want_grad in zip(
        jax.grad(loss(conv), (0, 1))(x, kernel), jax.grad(loss(reference), (0, 1))(x, kernel)
    ):
        np.testing.assert_allclose(got_grad, want_grad, rtol=1e-4, atol=1e-4)


CASES = [  # size, channels, multiplier, kernel, strides, padding
    (9, 3, 1, 3, (1, 1), "SAME"),
    (10, 4, 1, 3, (2, 2), "SAME"),
    (11, 4, 1, 3, (2, 2), "VALID"),
    (8, 2, 2, 3, (1, 1), "SAME"),
    (12, 3, 1, 5, (1, 2), ((2, 1), (0, 3))),
    (10, 4, 1, 3, (2, 2), "VALID"),  # the last row meets no tap (the (11, ...) case: the last column)
    (13, 2, 1, 5, (3, 2), "SAME"),
]


@pytest.mark.parametrize("size,channels,multiplier,k,strides,padding", CASES)
def test_shifted_depthwise_matches_lax_forward_and_gradients(size, channels, multiplier, k, strides, padding):
    rng = np.random.default_rng(size)
    x = jnp.asarray(rng.normal(size=(2, size, size + 1, channels)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, 1, channels * multiplier)), jnp.float32)
    assert_equal_in_value_and_gradients(layers.shifted_depthwise, lax_depthwise, x, kernel, strides, padding, rng)


def test_shifted_depthwise_bfloat16_close_to_float32():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 16, 16, 8)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 8)), jnp.float32)
    want = layers.shifted_depthwise(x, kernel)
    got = layers.shifted_depthwise(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0.05, atol=0.1)

    def loss(x, kernel):
        return jnp.sum(layers.shifted_depthwise(x, kernel, (2, 2)).astype(jnp.float32) ** 2)

    want_grads = jax.grad(loss, (0, 1))(x, kernel)
    got_grads = jax.grad(loss, (0, 1))(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))
    for got_grad, want_grad in zip(got_grads, want_grads):
        assert got_grad.dtype == jnp.bfloat16
        scale = float(jnp.abs(want_grad).max())
        np.testing.assert_allclose(np.asarray(got_grad, np.float32) / scale, want_grad / scale, atol=0.05)


def _depthwise_conv(impl, channels=4, groups=None):
    return nnx.Conv(
        channels,
        channels,
        (3, 3),
        feature_group_count=groups or channels,
        use_bias=False,
        conv_general_dilated=layers.conv_lowering(impl),
        rngs=nnx.Rngs(0),
    )


@pytest.mark.parametrize("groups", [4, 2])  # depthwise, and a grouped convolution that must fall back
def test_depthwise_lowering_choices_agree(groups):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 7, 7, 4)), jnp.float32)
    outs = [np.asarray(_depthwise_conv(impl, groups=groups)(x)) for impl in ("conv", "shifts", "auto")]
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs[2], outs[0], rtol=1e-5, atol=1e-5)


def test_conv_lowering_is_one_function_per_choice_and_checks_its_names():
    assert layers.conv_lowering("shifts") is layers.conv_lowering("shifts")
    assert layers.conv_lowering("auto", "gather") is not layers.conv_lowering("auto", "conv")
    assert layers.conv_lowering("auto", "taps") is layers.conv_lowering("auto", "taps")
    with pytest.raises(ValueError, match="unknown depthwise lowering 'fast'"):
        layers.conv_lowering("fast")
    with pytest.raises(ValueError, match="unknown dense convolution lowering 'im2col'"):
        layers.conv_lowering("auto", "im2col")


def lax_conv(x, kernel, strides, padding):
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


DENSE_CASES = [  # size, cin, cout, kernel (h, w), strides, padding
    (6, 5, 7, (1, 1), (1, 1), "VALID"),
    (7, 5, 4, (1, 1), (2, 2), "VALID"),
    (2, 6, 3, (3, 3), (1, 1), "SAME"),  # ResNet50's last stage at patch 64: the kernel overhangs the map
    (9, 3, 4, (3, 3), (2, 2), "SAME"),
    (10, 3, 5, (7, 7), (2, 2), ((3, 3), (3, 3))),  # a ResNet stem, padded by hand as Keras does
    (8, 4, 4, (1, 7), (1, 1), "SAME"),  # InceptionResNetV2's factorised 7x7
    (8, 4, 4, (3, 1), (1, 1), ((1, 1), (0, 0))),
    (11, 2, 3, (3, 3), (1, 2), "VALID"),
]


@pytest.mark.parametrize("size,cin,cout,k,strides,padding", DENSE_CASES)
def test_gathered_taps_conv_matches_lax_forward_and_gradients(size, cin, cout, k, strides, padding):
    rng = np.random.default_rng(size * 10 + cout)
    x = jnp.asarray(rng.normal(size=(2, size, size + 1, cin)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(*k, cin, cout)), jnp.float32)
    assert_equal_in_value_and_gradients(layers.gathered_taps_conv, lax_conv, x, kernel, strides, padding, rng)


def test_gathered_taps_conv_keeps_bfloat16():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 4, 4, 8)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 8, 8)), jnp.float32)
    want = lax_conv(x, kernel, (1, 1), "SAME")
    got = layers.gathered_taps_conv(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), (1, 1), "SAME")
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0.05, atol=0.3)


def _dense_conv(dense, k=3, strides=1, padding="SAME"):
    return nnx.Conv(
        8,  # more channels than an image's, which `_gather_wins` gathers
        6,
        (k, k),
        strides=strides,
        padding=padding,
        conv_general_dilated=layers.conv_lowering(dense=dense),
        rngs=nnx.Rngs(0),
    )


def _has_convolution(fn, *args) -> bool:
    return "conv_general_dilated" in str(jax.make_jaxpr(fn)(*args))


@pytest.mark.parametrize(
    "side,k,auto_gathers",
    [
        (20, 1, True),  # a 1x1 convolution is a product on any map
        (2, 3, True),  # a 3x3 kernel overhangs a 2x2 map (XLA:CPU leaves it to Eigen)
        (3, 3, False),  # it fits a 3x3 map: left to XLA's convolution
    ],
)
def test_conv_lowering_auto_gathers_pointwise_and_overhanging_kernels_on_the_cpu(side, k, auto_gathers):
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, side, side, 8)), jnp.float32)
    outs = {}
    for dense in ("conv", "gather", "auto"):
        conv = _dense_conv(dense, k)
        outs[dense] = np.asarray(conv(x))
        grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(conv)
        outs[dense + " kernel grad"] = np.asarray(grads.kernel.get_value())
        gathered = not _has_convolution(lambda x, conv=conv: conv(x), x)
        assert gathered == {"conv": False, "gather": True, "auto": auto_gathers}[dense], dense
    for name in ("gather", "auto"):
        np.testing.assert_allclose(outs[name], outs["conv"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(outs[name + " kernel grad"], outs["conv kernel grad"], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    "batch,side,cin,cout,auto_gathers",
    [
        (4, 7, 256, 256, True),  # ResNet50's last stage at patch 224, batch 4: 196 positions
        (16, 4, 256, 256, True),  # its third stage at patch 64, batch 16: 256 positions
        (32, 4, 256, 256, False),  # batch 32: 512 positions, YNNPACK's convolution keeps up
        (4, 7, 128, 256, False),  # narrow in: the gathered copy costs more per multiply-add
        (4, 7, 256, 32, False),  # narrow out (DenseNet's growth layers)
    ],
)
def test_conv_lowering_auto_gathers_wide_convolutions_over_few_positions(batch, side, cin, cout, auto_gathers):
    conv = nnx.Conv(cin, cout, (3, 3), conv_general_dilated=layers.conv_lowering(), rngs=nnx.Rngs(0))
    x = jax.ShapeDtypeStruct((batch, side, side, cin), jnp.float32)
    assert _has_convolution(lambda x: conv(x), x) != auto_gathers


@pytest.mark.parametrize(
    "side,cin,cout,k,strides,auto_gathers",
    [
        (224, 3, 64, 7, 2, True),  # ResNet50's and DenseNet's stem
        (224, 3, 32, 3, 2, True),  # MobileNetV2's
        (64, 1, 16, 5, 1, True),  # a grey image
        (56, 5, 64, 3, 1, False),  # more channels than an image has
    ],
)
def test_conv_lowering_auto_gathers_kernels_over_an_images_few_channels(side, cin, cout, k, strides, auto_gathers):
    conv = nnx.Conv(cin, cout, (k, k), strides=strides, conv_general_dilated=layers.conv_lowering(), rngs=nnx.Rngs(0))
    x = jax.ShapeDtypeStruct((4, side, side, cin), jnp.float32)
    assert _has_convolution(lambda x: conv(x), x) != auto_gathers


TAPS_CASES = [  # size, cin, cout, kernel (h, w), padding: stride 1 only
    (7, 12, 3, (3, 3), "SAME"),  # a DenseNet growth layer, narrowed
    (6, 5, 4, (3, 3), "VALID"),
    (8, 4, 4, (1, 7), "SAME"),
    (8, 4, 2, (3, 1), ((1, 1), (0, 0))),
    (5, 3, 2, (3, 3), ((2, 0), (1, 2))),  # uneven pads, wider than 'SAME'
]


@pytest.mark.parametrize("size,cin,cout,k,padding", TAPS_CASES)
def test_taps_product_conv_matches_lax_forward_and_gradients(size, cin, cout, k, padding):
    """The forward and the kernel's gradient (a product of the cotangent's shifted taps) to float
    rounding; the input's gradient is XLA's convolution's own, so equal."""
    rng = np.random.default_rng(size * 10 + cout)
    x = jnp.asarray(rng.normal(size=(2, size, size + 1, cin)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(*k, cin, cout)), jnp.float32)
    pads = layers._explicit_pads(x.shape, kernel.shape, (1, 1), padding)
    want, pull_want = jax.vjp(lambda x, w: lax_conv(x, w, (1, 1), padding), x, kernel)
    got, pull_got = jax.vjp(lambda x, w: layers.taps_product_conv(x, w, pads), x, kernel)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    cotangent = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
    (got_dx, got_dk), (want_dx, want_dk) = pull_got(cotangent), pull_want(cotangent)
    np.testing.assert_array_equal(got_dx, want_dx)
    assert got_dk.dtype == want_dk.dtype and got_dk.shape == want_dk.shape
    np.testing.assert_allclose(got_dk, want_dk, rtol=1e-5, atol=1e-5 * float(jnp.abs(want_dk).max()))


def test_taps_product_conv_kernel_gradient_in_bfloat16_accumulates_in_float32():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 12, 12, 16)), jnp.float32).astype(jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 16, 4)), jnp.float32).astype(jnp.bfloat16)
    g = jnp.asarray(rng.normal(size=(2, 12, 12, 4)), jnp.float32).astype(jnp.bfloat16)
    pads = ((1, 1), (1, 1))
    _, pull = jax.vjp(lambda w: layers.taps_product_conv(x, w, pads), kernel)
    (got,) = pull(g)
    f32 = [a.astype(jnp.float32) for a in (x, kernel, g)]
    (exact,) = jax.vjp(lambda w: lax_conv(f32[0], w, (1, 1), pads), f32[1])[1](f32[2])
    assert got.dtype == jnp.bfloat16
    # 288 products per entry summed in float32, then one rounding to bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), exact, rtol=2**-8, atol=2**-8 * float(jnp.abs(exact).max()))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_written_out_returns_its_input_exactly_through_a_product(dtype):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 5, 7, 6)) * 10.0 ** rng.integers(-20, 20, size=(2, 5, 7, 6)), dtype)
    got = layers.written_out(x)
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(x, np.float32))
    assert "dot_general" in str(jax.make_jaxpr(layers.written_out)(x))  # what XLA does not fuse into consumers


def test_taps_product_conv_sums_bfloat16_taps_in_float32():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 16)), jnp.float32).astype(jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 16, 4)), jnp.float32).astype(jnp.bfloat16)
    exact = lax_conv(x.astype(jnp.float32), kernel.astype(jnp.float32), (1, 1), "SAME")
    got = layers.taps_product_conv(x, kernel, ((1, 1), (1, 1)))
    assert got.dtype == jnp.bfloat16
    # one rounding to bfloat16 at the end (half an ulp, 2**-9 relative), not one per tap
    np.testing.assert_allclose(np.asarray(got, np.float32), exact, rtol=2**-8, atol=1e-3)


@pytest.mark.parametrize(
    "batch,side,cin,cout,kernel,auto_takes_taps",
    [
        (4, 56, 128, 32, 3, True),  # DenseNet121's first block at patch 224, batch 4
        (4, 14, 128, 32, 3, True),  # its third block: 784 positions
        (4, 7, 128, 32, 3, False),  # its last: 196 positions, the convolution is as fast
        (16, 56, 128, 32, 3, False),  # batch 16: 14.5 M taps' outputs cost more than they save
        (4, 28, 128, 128, 3, False),  # wide out: YNNPACK runs it on both cores
        (4, 28, 32, 32, 3, False),  # taps' outputs 9x the input's channels
        (32, 16, 48, 32, 3, False),  # the demo camnet's first layer: 6x, left as it was measured
        (4, 28, 128, 32, 1, False),  # a 1x1 kernel is gathered (a plain product)
    ],
)
def test_conv_lowering_auto_takes_taps_for_narrow_layers_on_the_cpu(batch, side, cin, cout, kernel, auto_takes_taps):
    conv = nnx.Conv(cin, cout, (kernel, kernel), conv_general_dilated=layers.conv_lowering(), rngs=nnx.Rngs(0))
    jaxpr = str(jax.make_jaxpr(lambda x: conv(x))(jax.ShapeDtypeStruct((batch, side, side, cin), jnp.float32)))
    assert ("fwd=_taps_product_conv_fwd" in jaxpr) == auto_takes_taps
    assert ("conv_general_dilated" in jaxpr) == (kernel > 1 and not auto_takes_taps)


def test_conv_lowering_taps_on_request_everywhere_stride_one():
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 5, 5, 8)), jnp.float32)
    taps, conv = _dense_conv("taps"), _dense_conv("conv")
    assert not _has_convolution(lambda x: taps(x), x)
    np.testing.assert_allclose(taps(x), conv(x), rtol=1e-5, atol=1e-5)
    strided = _dense_conv("taps", strides=2)
    assert _has_convolution(lambda x: strided(x), x)  # a strided layer stays XLA's


@pytest.mark.parametrize(
    "batch,slices,k,padding,parts",
    [
        (4, (4, 1), (3, 3), "SAME", 4),  # one image a run
        (5, (3, 1), (3, 3), "VALID", 3),  # runs of 2, 1 and 2 images
        (3, (2, 1), (1, 5), ((0, 0), (3, 1)), 2),  # uneven pads
        (2, (2, 3), (3, 3), "SAME", 6),  # bands of 2, 3 and 2 rows, padded at the edges only
        (3, (1, 7), (5, 3), ((3, 1), (1, 1)), 7),  # one row a band, the first three reading rows above the input
        (2, (2, 2), (3, 3), "VALID", 4),  # bands whose inputs overlap by two rows
        (2, (1, 5), (2, 2), ((0, 4), (1, 0)), 4),  # the last band reads padding alone and is left out
    ],
)
def test_sliced_kernel_grad_conv_matches_lax_forward_and_gradients(batch, slices, k, padding, parts):
    """The forward and the input's gradient are XLA's own, so equal; the kernel's gradient is
    the sum of each run's and each band's (`parts` convolutions), equal to float rounding."""
    rng = np.random.default_rng(batch * 10 + sum(slices))
    x = jnp.asarray(rng.normal(size=(batch, 7, 8, 5)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(*k, 5, 6)), jnp.float32)
    pads = layers._explicit_pads(x.shape, kernel.shape, (1, 1), padding)
    want, pull_want = jax.vjp(lambda x, w: lax_conv(x, w, (1, 1), padding), x, kernel)
    got, pull_got = jax.vjp(lambda x, w: layers.sliced_kernel_grad_conv(x, w, pads, slices), x, kernel)
    np.testing.assert_array_equal(got, want)
    cotangent = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
    backward = str(jax.make_jaxpr(pull_got)(cotangent))
    assert backward.count("conv_general_dilated[") == 1 + parts  # the input's gradient, then the kernel's parts
    (got_dx, got_dk), (want_dx, want_dk) = pull_got(cotangent), pull_want(cotangent)
    np.testing.assert_array_equal(got_dx, want_dx)
    assert got_dk.dtype == want_dk.dtype and got_dk.shape == want_dk.shape
    np.testing.assert_allclose(got_dk, want_dk, rtol=1e-5, atol=1e-5 * float(jnp.abs(want_dk).max()))
    one_run = jax.vjp(lambda w: lax_conv(x[:1], w, (1, 1), padding), kernel)[1](cotangent[:1])[0]
    assert not np.allclose(got_dk, one_run, rtol=0.1)  # every run counts, not only the first


def test_sliced_kernel_grad_conv_sums_bfloat16_parts_in_float32():
    rng = np.random.default_rng(5)
    x, kernel, g = (
        jnp.asarray(rng.normal(size=shape), jnp.float32).astype(jnp.bfloat16)
        for shape in ((8, 6, 6, 16), (3, 3, 16, 4), (8, 6, 6, 4))
    )
    pads = ((1, 1), (1, 1))
    (got,) = jax.vjp(lambda w: layers.sliced_kernel_grad_conv(x, w, pads, (8, 1)), kernel)[1](g)
    f32 = [a.astype(jnp.float32) for a in (x, kernel, g)]
    (exact,) = jax.vjp(lambda w: lax_conv(f32[0], w, (1, 1), pads), f32[1])[1](f32[2])
    assert got.dtype == jnp.bfloat16
    # eight parts, each rounded to bfloat16 once, summed in float32, rounded once more
    np.testing.assert_allclose(np.asarray(got, np.float32), exact, rtol=2**-7, atol=2**-7 * float(jnp.abs(exact).max()))


@pytest.mark.parametrize(
    "batch,side,cin,cout,kernel,slices",
    [
        (4, 56, 64, 64, 3, (4, 1)),  # ResNet50's first stage at patch 224, batch 4: 6.4 MB, one image a run
        (4, 28, 128, 128, 3, (2, 1)),  # its second: 3.2 MB, two images a run
        (4, 14, 256, 256, 3, (1, 1)),  # its third: 1.6 MB, whole
        (8, 16, 64, 64, 3, (1, 1)),  # its first at patch 64, batch 8
        (4, 128, 64, 64, 3, (4, 4)),  # its first at patch 512: 8.4 MB an image, four bands of 32 rows
        (4, 64, 128, 128, 3, (4, 2)),  # its second at patch 512: 4.2 MB an image, two bands
        (2, 147, 32, 64, 3, (2, 4)),  # InceptionResNetV2's third stem layer at patch 299: 8.3 MB an image
        (64, 32, 64, 64, 3, (16, 1)),  # camnet's at patch 128, batch 64: 34 MB
        (4, 35, 32, 48, 3, (1, 1)),  # InceptionResNetV2's 35x35 layers
        (4, 56, 64, 64, 1, (1, 1)),  # a 1x1 kernel is a plain product
    ],
)
def test_conv_lowering_auto_slices_kernel_gradients_whose_operands_outgrow_the_budget(
    batch, side, cin, cout, kernel, slices
):
    """Counted in the gradient's jaxpr: a sliced layer has its forward, its input gradient and
    one kernel gradient a run and band as convolutions."""
    assert layers._kernel_grad_slices((batch, side, side, cin), (kernel, kernel, cin, cout), 4) == slices
    conv = nnx.Conv(cin, cout, (kernel, kernel), conv_general_dilated=layers.conv_lowering(), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(conv)
    grad = jax.grad(lambda params, x: nnx.merge(graphdef, params)(x).sum(), argnums=(0, 1))
    jaxpr = str(jax.make_jaxpr(grad)(params, jax.ShapeDtypeStruct((batch, side, side, cin), jnp.float32)))
    runs, bands = slices
    assert jaxpr.count("conv_general_dilated[") == (0 if kernel == 1 else 2 + runs * bands)


def test_conv_lowering_leaves_dilated_and_grouped_convolutions_to_xla():
    x = jnp.ones((1, 6, 6, 4), jnp.float32)
    dilated = nnx.Conv(
        4, 4, (3, 3), kernel_dilation=2, conv_general_dilated=layers.conv_lowering(dense="gather"), rngs=nnx.Rngs(0)
    )
    grouped = nnx.Conv(
        4, 4, (3, 3), feature_group_count=2, conv_general_dilated=layers.conv_lowering(dense="gather"), rngs=nnx.Rngs(0)
    )
    for conv in (dilated, grouped):
        assert _has_convolution(lambda x, conv=conv: conv(x), x)


@pytest.mark.parametrize("kind,kernel", [("box3", np.full((3, 3), 1 / 9)), ("kv5", layers.KV_KERNEL)])
def test_highpass_matches_scipy(kind, kernel):
    x = np.random.default_rng(2).uniform(-1, 1, (2, 13, 11, 3)).astype(np.float32)
    filtered = np.stack(
        [np.stack([ndimage.correlate(img[..., c], kernel, mode="nearest") for c in range(3)], -1) for img in x]
    )
    want = x - filtered if kind == "box3" else filtered
    got = layers.HighPass(kind, rngs=nnx.Rngs(0))(jnp.asarray(x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["tf", "torch", "caffe"])
def test_highpass_clip_truncates_the_residual_at_grey_levels_in_every_preprocessing(mode):
    """The residual of preprocessed pixels, clipped at +-2 grey levels, is the clipped residual
    of the raw pixels (in the channel order preprocess returns) scaled to the backbone's units."""
    x = np.random.default_rng(3).integers(0, 256, (2, 16, 16, 3)).astype(np.float32)
    x[0, 4:, 8:] = 255.0  # a scene edge: a residual of tens of grey levels
    got = layers.HighPass("box3", clip=2.0, pixel_mode=mode, rngs=nnx.Rngs(0))(layers.preprocess(jnp.asarray(x), mode))
    raw = np.asarray(layers.box3_residual(jnp.asarray(x[..., ::-1] if mode == "caffe" else x)))
    assert np.abs(raw).max() > 20 and (np.abs(raw) < 2).mean() > 0.05  # both sides of the bound occur
    want = np.clip(raw, -2.0, 2.0) * layers.gray_level(mode)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    unclipped = layers.HighPass("box3", pixel_mode=mode, rngs=nnx.Rngs(0))(layers.preprocess(jnp.asarray(x), mode))
    np.testing.assert_allclose(unclipped, raw * layers.gray_level(mode), rtol=1e-4, atol=1e-4)


def test_highpass_clip_needs_a_highpass():
    with pytest.raises(ValueError, match="clip 2.0 needs"):
        layers.HighPass("none", clip=2.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="clip -1.0 needs"):
        layers.HighPass("box3", clip=-1.0, rngs=nnx.Rngs(0))


def _model_config(**overrides):
    c = ml_collections.ConfigDict(
        dict(
            name="mobilenet",
            kwargs=dict(alpha=0.25),
            highpass="none",
            pooling="avg",
            head=dict(hidden=(8,), dropout=(0.0,)),
        )
    )
    c.update(overrides)
    return c


def _momenta(model):
    return {m.momentum for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)}


def test_bn_momentum_overrides_every_backbone_batchnorm():
    assert _momenta(models.create(_model_config(), 3)) == {0.99}  # Keras' MobileNet
    assert _momenta(models.create(_model_config(bn_momentum=0.9), 3)) == {0.9}
    with pytest.raises(ValueError, match="bn_momentum must be in"):
        models.create(_model_config(bn_momentum=1.5), 3)


def test_patch_too_small_for_the_backbone_is_a_clear_error():
    model = models.create(_model_config(space_to_depth=4), 3)
    with pytest.raises(ValueError, match="empty feature map .* use a larger data.patch"):
        model(jnp.zeros((1, 64, 64, 3)), jnp.zeros((1,)))


def test_batchnorm_updates_like_flax_and_tracing_never_asks_a_tracer_for_its_sharding(monkeypatch):
    """camjax's BatchNorm is flax's with statistics whose traced update skips the sharding
    probe that made tracing quadratic in depth: same outputs and running statistics, eagerly
    and under jit, and no tracer error message built while tracing a deep stack."""
    from jax._src.interpreters import partial_eval

    x = jnp.asarray(np.random.default_rng(0).normal(2.0, 3.0, size=(4, 5, 5, 6)), jnp.float32)
    ours, theirs = (cls(6, momentum=0.9, rngs=nnx.Rngs(0)) for cls in (layers.BatchNorm, nnx.BatchNorm))
    assert isinstance(ours, nnx.BatchNorm) and isinstance(ours.mean, nnx.BatchStat)

    @nnx.jit
    def step(bn, x):
        return bn(x)

    for bn in (ours, theirs):
        bn(x)  # eager
        step(bn, x + 1.0)  # traced
    np.testing.assert_array_equal(np.asarray(ours(x)), np.asarray(theirs(x)))
    for name in ("mean", "var"):
        np.testing.assert_array_equal(np.asarray(getattr(ours, name).get_value()), getattr(theirs, name).get_value())
        assert getattr(ours, name).get_value().dtype == jnp.float32
    assert not np.allclose(np.asarray(ours.mean.get_value()), 0.0)  # the statistics did move

    messages = []
    original = partial_eval.DynamicJaxprTracer._origin_msg
    monkeypatch.setattr(
        partial_eval.DynamicJaxprTracer, "_origin_msg", lambda self: messages.append(1) or original(self)
    )

    def trace(cls):  # a train-mode forward of eight BatchNorms, traced as a train step is
        graphdef, state = nnx.split(nnx.Sequential(*(cls(6, rngs=nnx.Rngs(0)) for _ in range(8))))
        jax.eval_shape(lambda state, x: nnx.merge(graphdef, state)(x), state, x)

    trace(layers.BatchNorm)
    assert messages == []
    trace(nnx.BatchNorm)
    assert len(messages) >= 16  # the probe it guards against: flax asks at each statistic update


def _bn_fit(grad, x, weights, *, dtype=jnp.float32, use_scale=True, axis_name=None):
    """Loss, gradients (input, scale, bias) and running statistics after one training-mode call
    of a BatchNorm with the given gradient, under a ReLU6 and a weighted sum."""
    bn = layers.BatchNorm(6, grad=grad, dtype=dtype, use_scale=use_scale, axis_name=axis_name, rngs=nnx.Rngs(0))
    if use_scale:
        bn.scale[...] = jnp.arange(1.0, 7.0)
    bn.bias[...] = jnp.arange(6.0) - 2.0

    def loss(x, bn):
        return jnp.vdot(jnp.clip(bn(x, use_running_average=False).astype(jnp.float32), 0, 6), weights)

    value, (dx, dbn) = nnx.value_and_grad(loss, argnums=(0, 1))(x, bn)
    out = {"loss": value, "dx": dx, "dbias": dbn["bias"][...], "mean": bn.mean[...], "var": bn.var[...]}
    if use_scale:
        out["dscale"] = dbn["scale"][...]
    return out


def _assert_fits_agree(ours, theirs, rtol, atol=None):
    """Every entry of two fits (loss, gradients, statistics) finite and equal to `rtol` and
    `atol` (by default `rtol` times the entry's largest value)."""
    assert ours.keys() == theirs.keys()
    for name in ours:
        a, b = np.asarray(ours[name], np.float32), np.asarray(theirs[name], np.float32)
        assert np.all(np.isfinite(a)), name
        tolerance = rtol * np.abs(b).max() if atol is None else atol
        np.testing.assert_allclose(a, b, rtol=rtol, atol=tolerance, err_msg=name)


def _on_devices(fit, variants, *args):
    """`fit(variant, *args)` of each variant with the leading axis of `args` as a named device
    axis (pmap's `bn_axis_name`; `vmap` names it here)."""
    return [jax.vmap(lambda *a, v=v: fit(v, *a, axis_name="devices"), axis_name="devices")(*args) for v in variants]


@pytest.mark.parametrize(
    "dtype,use_scale,rtol",
    [(jnp.float32, True, 1e-5), (jnp.float32, False, 1e-5), (jnp.bfloat16, True, 1e-2)],
)
def test_batchnorm_written_gradient_equals_autodiff_of_flax(dtype, use_scale, rtol):
    """BatchNorm's written gradient (two reductions, one elementwise pass) against JAX's
    autodiff of flax's forward: the same loss, running statistics and gradients, to rounding
    (bfloat16: the input's gradient is rounded to it at other points of autodiff's graph)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(1.0, 3.0, size=(4, 9, 9, 6)), dtype)
    x = x.at[..., 5].set(2.0)  # a constant channel: variance 0, clipped
    weights = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    ours, theirs = (_bn_fit(grad, x, weights, dtype=dtype, use_scale=use_scale) for grad in ("written", "autodiff"))
    _assert_fits_agree(ours, theirs, rtol)
    assert ours["dx"].dtype == dtype


def test_batchnorm_written_gradient_averages_over_devices_like_autodiff():
    """Under a named device axis (pmap's `bn_axis_name`; `vmap` names one here) the statistics
    and the input's gradient see every device's batch, the parameters' gradients each
    device's own, as autodiff of flax's pmean gives them."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(0.5, 2.0, size=(4, 2, 5, 5, 6)), jnp.float32)  # 4 devices, 2 images each
    weights = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    ours, theirs = _on_devices(_bn_fit, ("written", "autodiff"), x, weights)
    _assert_fits_agree(ours, theirs, 1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(ours["dscale"][0]), np.asarray(ours["dscale"][1]))  # each device's own
    np.testing.assert_allclose(np.asarray(ours["mean"][0]), np.asarray(ours["mean"][3]), rtol=1e-6)  # global


def test_batch_norm_train_refuses_a_gradient_through_its_statistics():
    """Its mean and variance feed the running averages under stop_gradient; a loss that
    differentiates them would get a wrong gradient, so it is an error instead."""
    x = jnp.ones((2, 3, 3, 4)) * jnp.arange(4.0)
    with pytest.raises(ValueError, match="differentiate y only"):
        jax.grad(lambda x: layers.batch_norm_train(x, jnp.ones(4), jnp.zeros(4), 1e-3, None)[1].sum())(x)
    with pytest.raises(ValueError, match="grad must be one of"):
        layers.BatchNorm(4, grad="fast", rngs=nnx.Rngs(0))


def _relu_concat_fit(path, pieces, weights, *, dtype=jnp.float32, axis_name=None, train=True):
    """Loss, gradients (the concatenated pieces', scale, bias) and running statistics after one
    call of relu(BatchNorm(concatenate(pieces))): `path` 'pieces' is `BatchNorm.relu_concat`,
    'flax' concatenates and runs flax's BatchNorm under JAX's autodiff."""
    c = sum(p.shape[-1] for p in pieces)
    bn = layers.BatchNorm(
        c, grad="written" if path == "pieces" else "autodiff", dtype=dtype, axis_name=axis_name, rngs=nnx.Rngs(0)
    )
    bn.scale[...] = jnp.linspace(0.5, 1.5, c)
    bn.bias[...] = jnp.linspace(-1.0, 0.5, c)
    bn.mean[...] = jnp.linspace(-0.2, 0.2, c)
    if not train:
        bn.eval()

    def loss(pieces, bn):
        if path == "pieces":
            z = bn.relu_concat(pieces, [bn.piece_moments(p) for p in pieces])
        else:
            z = jax.nn.relu(bn(jnp.concatenate(pieces, axis=-1)))
        assert z.dtype == dtype
        return jnp.vdot(z.astype(jnp.float32), weights)

    value, (d_pieces, dbn) = nnx.value_and_grad(loss, argnums=(0, 1))(pieces, bn)
    return {
        "loss": value,
        "dx": jnp.concatenate(d_pieces, axis=-1),
        "dscale": dbn["scale"][...],
        "dbias": dbn["bias"][...],
        "mean": bn.mean[...],
        "var": bn.var[...],
    }


def _pieces(shape, widths, dtype, seed):
    rng = np.random.default_rng(seed)
    pieces = [jnp.asarray(rng.normal(0.5, 2.0, size=(*shape, w)), dtype) for w in widths]
    pieces[1] = pieces[1].at[..., 0].set(2.0)  # a constant channel: variance 0, clipped
    return pieces, jnp.asarray(rng.normal(size=(*shape, sum(widths))), jnp.float32)


@pytest.mark.parametrize("dtype,rtol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_relu_concat_of_pieces_equals_flax_on_the_concatenation(dtype, rtol):
    """A dense block's BatchNorm-ReLU over its feature maps kept apart, from each map's own
    statistics, against concatenating them and running flax's BatchNorm under autodiff: the
    same output, running statistics and gradients (the pieces', through the statistics too)."""
    pieces, weights = _pieces((3, 5, 4), (4, 3, 1, 8), dtype, seed=0)
    ours, theirs = (_relu_concat_fit(path, pieces, weights, dtype=dtype) for path in ("pieces", "flax"))
    _assert_fits_agree(ours, theirs, rtol)
    assert ours["dx"].dtype == dtype


def test_relu_concat_of_pieces_averages_over_devices_and_is_flax_in_eval_mode():
    """Under a named device axis the statistics and the input's gradient see every device's
    batch, as flax's pmean gives them; in eval mode it is flax's BatchNorm on the
    concatenation, running averages and all."""
    pieces, weights = _pieces((4, 2, 3, 3), (2, 5), jnp.float32, seed=1)  # 4 devices, 2 images each
    ours, theirs = _on_devices(_relu_concat_fit, ("pieces", "flax"), pieces, weights)
    _assert_fits_agree(ours, theirs, 1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours["mean"][0]), np.asarray(ours["mean"][3]), rtol=1e-6)  # global
    pieces, weights = _pieces((2, 3, 3), (2, 5), jnp.float32, seed=2)
    ours, theirs = (_relu_concat_fit(path, pieces, weights, train=False) for path in ("pieces", "flax"))
    for name in ours:
        np.testing.assert_array_equal(np.asarray(ours[name]), np.asarray(theirs[name]), err_msg=name)


def test_relu_concat_of_pieces_refuses_a_gradient_through_its_statistics():
    pieces = [jnp.ones((2, 3, 3, 2)) * jnp.arange(2.0), jnp.ones((2, 3, 3, 1))]
    moments = [layers.moments(p, None) for p in pieces]
    with pytest.raises(ValueError, match="differentiate z only"):
        jax.grad(lambda p: layers.batch_norm_relu_concat(p, moments, jnp.ones(3), jnp.zeros(3), 1e-3, None)[2].sum())(
            pieces
        )


@pytest.mark.parametrize(
    "shape,window,strides",
    [
        ((2, 9, 9, 3), (3, 3), (2, 2)),  # ResNet50's stem pool on a small map (odd: the last row meets one window)
        ((1, 10, 8, 2), (3, 3), (2, 2)),  # even: the last row and column meet no window
        ((2, 7, 11, 2), (3, 2), (1, 3)),  # unequal windows and strides
        ((1, 12, 12, 1), (2, 2), (2, 2)),  # windows that do not overlap
    ],
)
def test_max_pool_from_slices_equals_lax_in_value_and_gradient_ties_included(shape, window, strides):
    rng = np.random.default_rng(sum(shape))
    x = jnp.asarray(rng.integers(0, 3, size=shape), jnp.float32)  # three values: most windows tie
    want = nnx.max_pool(x, window, strides=strides, padding="VALID")
    got = layers.max_pool(x, window, strides, impl="shifts")
    np.testing.assert_array_equal(got, want)
    origin = tuple(-(k // 2) for k in window)  # scipy centres even windows one step later
    full = ndimage.maximum_filter(np.asarray(x), size=(1, *window, 1), mode="constant", origin=(0, *origin, 0))
    np.testing.assert_array_equal(
        got, full[:, : (shape[1] - window[0]) + 1 : strides[0], : (shape[2] - window[1]) + 1 : strides[1]]
    )
    weights = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
    grads = [
        jax.grad(lambda x, impl=impl: jnp.sum(layers.max_pool(x, window, strides, impl=impl) * weights))(x)
        for impl in ("shifts", "lax")
    ]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6, atol=1e-6)
    assert float(jnp.sum(grads[0] != 0)) > 0


def test_max_pool_from_slices_keeps_bfloat16_and_checks_its_name():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 9, 9, 2)), jnp.bfloat16)
    got = layers.max_pool(x, (3, 3), (2, 2), impl="shifts")
    assert got.dtype == jnp.bfloat16
    grad = jax.grad(lambda x: jnp.sum(layers.max_pool(x, (3, 3), (2, 2), impl="shifts").astype(jnp.float32)))(x)
    assert grad.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="max pool implementation"):
        layers.max_pool(x, (3, 3), (2, 2), impl="slices")


def test_max_pool_auto_takes_slices_on_the_cpu_and_lax_for_an_empty_map():
    def reduce_windows(x):
        return str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(layers.max_pool(x, (3, 3), (2, 2)))))(x)).count(
            "reduce_window"
        )

    assert reduce_windows(jnp.ones((1, 9, 9, 2))) == 0
    assert layers.max_pool(jnp.ones((1, 2, 9, 2)), (3, 3), (2, 2)).shape == (1, 0, 4, 2)  # as lax: an empty map
