"""Property-based tests (hypothesis) of crops, manipulations and the D4 group: for any frame
size, patch, grid and seed, shapes are static, dtypes kept, offsets on the grid, and the
transforms obey the group laws."""

import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from camjax import tta
from camjax.cameras import MANIPULATIONS
from camjax.data import grid, manipulations, train_loader

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
d4_element = st.integers(0, 7)


@st.composite
def frame_and_patch(draw):
    patch = draw(st.sampled_from([8, 16, 24, 32]))
    h = draw(st.integers(patch, 80))
    w = draw(st.integers(patch, 80))
    seed = draw(st.integers(0, 2**32 - 1))
    frame = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return frame, patch, seed


@FAST
@given(
    frame_and_patch(),
    st.sampled_from([2, 8]),
    st.integers(1, 6),
    st.sampled_from(["none", "flips", "d4"]),
    st.floats(0.0, 1.0),
)
def test_train_patches_are_static_uint8_and_on_the_grid(fp, step, count, view_set, manip_prob):
    frame, patch, seed = fp
    views = tta.views(view_set)
    out = train_loader.cut_train_patches(
        frame, np.random.default_rng(seed), patch=patch, count=count, step=step, manip_prob=manip_prob, views=views
    )
    assert out["image"].shape == (count, patch, patch, 3) and out["image"].dtype == np.uint8
    assert (out["origin"] % step == 0).all()
    for i in range(count):
        m = MANIPULATIONS[int(out["manipulation"][i])]
        size = manipulations.source_size(patch, m)
        top, left = out["origin"][i]
        assert top + size <= frame.shape[0] and left + size <= frame.shape[1], "crop inside the frame"
        assert int(out["d4"][i]) in views
        if m.kind == "none":  # an unmanipulated patch is exactly the frame's pixels, transformed
            expected = grid.d4_host(frame[top : top + patch, left : left + patch], int(out["d4"][i]))
            np.testing.assert_array_equal(out["image"][i], expected)


@FAST
@given(
    st.sampled_from([8, 16, 24, 40]),
    st.sampled_from(range(len(MANIPULATIONS))),
    st.integers(0, 2**32 - 1),
    st.integers(0, 9),
)
def test_every_manipulation_maps_its_source_to_one_static_uint8_patch(patch, m_id, seed, extra):
    m = MANIPULATIONS[m_id]
    size = manipulations.source_size(patch, m) + extra  # any source at least the required size
    source = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = manipulations.manipulate_patch(source, patch, m)
    assert out.shape == (patch, patch, 3) and out.dtype == np.uint8
    if m.kind == "gamma":  # a per-pixel table: equal inputs map to equal outputs, order kept
        flat_in = manipulations.centre_crop(source, patch).reshape(-1)
        flat_out = out.reshape(-1)
        order = np.argsort(flat_in, kind="stable")
        assert (np.diff(flat_out[order].astype(int)) >= 0).all()


@st.composite
def square_batch(draw):
    side = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(0, 256, (2, side, side, 3), dtype=np.uint8)


@FAST
@given(square_batch(), d4_element, d4_element, d4_element)
def test_d4_group_laws(x, a, b, c):
    t = lambda img, k: np.asarray(tta.transform(jnp.asarray(img), k))  # noqa: E731
    # composition, associativity, identity and inverse
    np.testing.assert_array_equal(t(t(x, b), a), t(x, tta.compose(a, b)))
    assert tta.compose(tta.compose(a, b), c) == tta.compose(a, tta.compose(b, c))
    assert tta.compose(a, 0) == tta.compose(0, a) == a
    np.testing.assert_array_equal(t(t(x, a), tta.inverse(a)), x)
    # dtype and shape kept; the host and device versions agree
    assert t(x, a).dtype == x.dtype and t(x, a).shape == x.shape
    np.testing.assert_array_equal(t(x, a)[0], grid.d4_host(x[0], a))
    # the per-example traced version agrees with the static one
    ks = np.array([a, b], np.int32)
    got = np.asarray(tta.transform_batch(jnp.asarray(x), jnp.asarray(ks)))
    np.testing.assert_array_equal(got[0], t(x[:1], a)[0])
    np.testing.assert_array_equal(got[1], t(x[1:], b)[0])


def test_d4_has_eight_distinct_elements():
    x = np.arange(2 * 3 * 3 * 1).reshape(1, 3, 3, 2) if False else np.arange(9).reshape(1, 3, 3, 1)
    images = {np.asarray(tta.transform(jnp.asarray(x), k)).tobytes() for k in range(8)}
    assert len(images) == 8
