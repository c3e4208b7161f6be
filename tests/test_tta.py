"""D4 group laws, agreement with numpy, per-example transforms and the vmapped TTA predictor."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camjax import tta

RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 5, 5, 3)).astype(np.float32)  # random: no symmetry


def _np_reference(x, name):
    h, w = 1, 2
    return {
        "identity": x,
        "rot90": np.rot90(x, 1, axes=(h, w)),
        "rot180": np.rot90(x, 2, axes=(h, w)),
        "rot270": np.rot90(x, 3, axes=(h, w)),
        "hflip": x[:, :, ::-1],
        "vflip": x[:, ::-1],
        "transpose": np.swapaxes(x, h, w),
        "antitranspose": np.swapaxes(x[:, ::-1, ::-1], h, w),
    }[name]


def test_transform_matches_numpy():
    assert len(tta.D4_NAMES) == 8 and tta.D4_NAMES[0] == "identity"
    for k, name in enumerate(tta.D4_NAMES):
        np.testing.assert_array_equal(np.asarray(tta.transform(jnp.asarray(X), k)), _np_reference(X, name))


def test_group_laws():
    x = jnp.asarray(X)
    outs = [np.asarray(tta.transform(x, k)) for k in range(8)]
    assert len({o.tobytes() for o in outs}) == 8  # 8 distinct views of a non-symmetric image
    for a, b in itertools.product(range(8), repeat=2):
        c = tta.compose(a, b)
        assert 0 <= c < 8
        np.testing.assert_array_equal(np.asarray(tta.transform(tta.transform(x, b), a)), outs[c])
    for k in range(8):
        assert tta.compose(k, tta.inverse(k)) == 0 == tta.compose(tta.inverse(k), k)
        assert tta.compose(0, k) == k == tta.compose(k, 0)
        np.testing.assert_array_equal(np.asarray(tta.transform(tta.transform(x, k), tta.inverse(k))), X)
    for a, b, c in itertools.product(range(8), repeat=3):
        assert tta.compose(a, tta.compose(b, c)) == tta.compose(tta.compose(a, b), c)


def test_view_sets():
    assert tta.views("none") == (0,)
    assert tta.views("d4") == tuple(range(8))
    assert {tta.D4_NAMES[k] for k in tta.views("rot90")} == {"identity", "rot90", "rot180", "rot270"}
    assert {tta.D4_NAMES[k] for k in tta.views("flips")} == {"identity", "hflip", "vflip", "rot180"}
    # 'flips' is closed under composition and works on non-square images.
    flips = set(tta.views("flips"))
    assert {tta.compose(a, b) for a in flips for b in flips} == flips
    wide = RNG.normal(size=(1, 4, 6, 2)).astype(np.float32)
    for k in tta.views("flips"):
        out = np.asarray(tta.transform(jnp.asarray(wide), k))
        np.testing.assert_array_equal(out, _np_reference(wide, tta.D4_NAMES[k]))
    assert tta.views_unseen("flips", "d4") == (1, 3, 5, 7)
    assert tta.views_unseen("d4", "flips") == ()
    assert tta.views_unseen("none", "rot90") == (1, 2, 3)
    with pytest.raises(ValueError, match="unknown view set"):
        tta.views("d8")


def test_non_square_rotation_raises():
    x = jnp.zeros((1, 4, 6, 3))
    with pytest.raises(ValueError, match="square"):
        tta.transform(x, 1)
    with pytest.raises(ValueError, match="square"):
        tta.make_tta_predict(lambda im: im.mean(axis=(1, 2)), tta.views("d4"))(x)
    assert tta.transform(x, 6).shape == x.shape


def test_transform_batch_matches_transform():
    x = jnp.asarray(RNG.normal(size=(16, 4, 4, 2)).astype(np.float32))
    ks = jnp.asarray(np.arange(16) % 8)[::-1]
    out = np.asarray(jax.jit(tta.transform_batch)(x, ks))
    for i, k in enumerate(np.asarray(ks)):
        np.testing.assert_array_equal(out[i], np.asarray(tta.transform(x[i : i + 1], int(k)))[0])


def _small_model(seed=0, classes=5):
    """A fixed random conv + mean/max pooling + dense, not invariant to any D4 element."""
    rng = np.random.default_rng(seed)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 3, 8)).astype(np.float32))
    dense = jnp.asarray(rng.normal(size=(17, classes)).astype(np.float32))
    pos = jnp.asarray(rng.normal(size=(8, 8)).astype(np.float32))  # position-dependent weights

    def apply_fn(images, flag):
        h = jax.lax.conv_general_dilated(images, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jax.nn.relu(h)
        feats = jnp.einsum("bhwc,hw->bc", h, pos) / 64.0
        feats = jnp.concatenate([feats, h.max(axis=(1, 2)), flag[:, None]], axis=-1)
        return feats @ dense

    return apply_fn


def test_tta_predict_equals_loop_and_jits_once():
    apply_fn = _small_model()
    traces = []

    def counted(images, flag):
        traces.append(images.shape)
        return apply_fn(images, flag)

    view_ids = tta.views("d4")
    predict = jax.jit(tta.make_tta_predict(counted, view_ids))
    x = jnp.asarray(RNG.normal(size=(3, 8, 8, 3)).astype(np.float32))
    flag = jnp.asarray([0.0, 1.0, 0.0])
    probs = np.asarray(predict(x, flag))
    assert probs.shape == (8, 3, 5) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    for v, k in enumerate(view_ids):
        ref = jax.nn.softmax(apply_fn(tta.transform(x, k), flag), axis=-1)
        np.testing.assert_allclose(probs[v], np.asarray(ref), rtol=1e-4, atol=1e-6)
    assert len({probs[v].tobytes() for v in range(8)}) == 8  # the model is not D4-invariant
    predict(x + 1.0, flag)
    assert len(traces) == 1 and traces[0][0] == 3 * 8  # one model call on all 24 view-images, no retrace


def test_tta_predict_softmax_in_float32():
    predict = jax.jit(tta.make_tta_predict(lambda im: im.mean(axis=(1, 2)) * 40.0, tta.views("flips")))
    probs = predict(jnp.asarray(RNG.normal(size=(2, 4, 4, 3)), jnp.bfloat16))
    assert probs.shape == (4, 2, 3) and probs.dtype == jnp.float32


def test_tta_predict_reads_the_identity_views_features_from_the_same_call():
    calls = []

    def apply_fn(images, flag):
        calls.append(images.shape)
        feats = images.mean(axis=(1, 2)) + flag[:, None]  # [N, 3], the same in every view
        feats = jnp.concatenate([feats, images[:, 0, 0, :]], axis=-1)  # the corner pixel moves with the view
        return feats, feats @ jnp.ones((6, 4))

    view_ids = (2, 0, 5)  # the identity is not the first view
    predict = jax.jit(tta.make_tta_predict(apply_fn, view_ids, features=True))
    x = jnp.asarray(RNG.normal(size=(3, 8, 8, 3)).astype(np.float32))
    flag = jnp.asarray([0.0, 1.0, 0.0])
    probs, feats = predict(x, flag)
    assert probs.shape == (3, 3, 4) and feats.shape == (3, 6) and feats.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(feats), np.asarray(apply_fn(x, flag)[0]), rtol=1e-6)
    assert len(calls) == 2  # the reference call above, and one traced call for all views
    with pytest.raises(ValueError, match="identity"):
        tta.make_tta_predict(apply_fn, (1, 2), features=True)
