"""The on-device manipulations, crops and D4 views against their host references
(camjax.data.manipulations: OpenCV, Pillow/libjpeg, the gamma table; numpy slicing;
grid.d4_host), under jit and vmap, with static output shapes."""

import io

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from camjax_testdata import texture
from PIL import Image

from camjax.cameras import MANIPULATIONS, NUM_MANIPULATIONS, manipulation_by_name
from camjax.data import device_ops, grid, manipulations

PATCH = 32
RAW = device_ops.raw_size(PATCH)  # 64
RNG = np.random.default_rng(0)


def _images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Textured and pure-noise uint8 images, alternating (noise is rounding's worst case)."""
    rng = np.random.default_rng(seed)
    return np.stack(
        [texture(h, w, seed + i) if i % 2 == 0 else rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for i in range(n)]
    )


def _off_by(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Fraction of values that differ, and the largest difference."""
    d = np.abs(a.astype(np.int32) - b.astype(np.int32))
    return float(np.mean(d > 0)), int(d.max())


def test_raw_size_is_the_largest_source():
    assert device_ops.raw_size(PATCH) == max(manipulations.source_size(PATCH, m) for m in MANIPULATIONS) == 2 * PATCH
    assert device_ops.raw_size(512) == 1024


def test_gamma_is_bit_exact_under_jit_and_vmap():
    every_value = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    images = np.concatenate([every_value, _images(1, 16, 16)])
    for m in MANIPULATIONS:
        if m.kind == "gamma":
            want = np.stack([manipulations.gamma_correct(x, m.value) for x in images])
            got = jax.jit(jax.vmap(lambda x, g=m.value: device_ops.gamma(x, g)))(images)
            assert got.dtype == jnp.uint8
            np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("name", ["resize0.5", "resize0.8", "resize1.5", "resize2.0"])
def test_resize_matches_opencv(name):
    """Measured on 256-512 px patches: ~1e-5 of the values off by 1 (float summation order),
    none by more; with OpenCV's IPP off its fixed-point code differs by 1 on up to ~5%."""
    m = manipulation_by_name(name)
    for patch in (PATCH, 48):
        sources = _images(6, device_ops.raw_size(patch), device_ops.raw_size(patch), seed=patch)
        want = np.stack([manipulations.manipulate_patch(x, patch, m) for x in sources])
        got = jax.jit(lambda x, p=patch: device_ops.resize(x, m.value, patch=p))(sources)
        assert got.shape == (6, patch, patch, 3) and got.dtype == jnp.uint8
        frac, worst = _off_by(np.asarray(got), want)
        assert worst <= 1 and frac <= 1e-3, (name, patch, frac, worst)
        use_ipp = cv2.ipp.useIPP()
        try:
            cv2.ipp.setUseIPP(False)
            fixed_point = np.stack([manipulations.manipulate_patch(x, patch, m) for x in sources])
        finally:
            cv2.ipp.setUseIPP(use_ipp)
        frac, worst = _off_by(np.asarray(got), fixed_point)
        assert worst <= 1 and frac <= 0.1, (name, patch, frac, worst)


@pytest.mark.parametrize("quality", [30, 50, 70, 90, 95, 100])
def test_quant_tables_are_libjpegs(quality):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="JPEG", quality=quality)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        tables = im.quantization  # natural (row-major) order
    np.testing.assert_array_equal(device_ops.quant_tables(quality).reshape(2, 64), [tables[0], tables[1]])


def test_jpeg_is_bit_exact_with_pillow():
    """Pillow's libjpeg(-turbo) encoder and decoder, reproduced step by step: measured bit-exact
    on every size tried (PSNR infinite), including sizes off the 16 px MCU grid."""

    @jax.jit
    def both_qualities(x):  # one compile per size; q=70 also per example under vmap
        return device_ops.jpeg(x, 70), device_ops.jpeg(x, 90), jax.vmap(lambda i: device_ops.jpeg(i[None], 70)[0])(x)

    for h, w in ((32, 32), (37, 53)):
        images = _images(4, h, w, seed=h)
        q70, q90, q70_vmapped = both_qualities(images)
        for q, got in ((70, q70), (90, q90), (70, q70_vmapped)):
            want = np.stack([manipulations.jpeg_compress(x, q) for x in images])
            assert got.shape == images.shape and got.dtype == jnp.uint8
            np.testing.assert_array_equal(np.asarray(got), want, err_msg=f"{h}x{w} q={q}")


@pytest.fixture(scope="module")
def batch():
    """Raw crops under every manipulation id twice and every D4 view, with the host's results."""
    raw = _images(2 * NUM_MANIPULATIONS, RAW, RAW, seed=7)
    ids = np.arange(2 * NUM_MANIPULATIONS, dtype=np.int32) % NUM_MANIPULATIONS
    d4 = np.arange(2 * NUM_MANIPULATIONS, dtype=np.int32) % 8
    manipulated = np.stack([manipulations.manipulate_patch(x, PATCH, MANIPULATIONS[i]) for x, i in zip(raw, ids)])
    viewed = np.stack([grid.d4_host(x, int(k)) for x, k in zip(manipulated, d4)])
    return raw, ids, d4, manipulated, viewed


def _check_against_host(got: np.ndarray, want: np.ndarray, ids: np.ndarray) -> None:
    for b, i in enumerate(ids):
        if MANIPULATIONS[i].kind == "resize":
            frac, worst = _off_by(got[b], want[b])
            assert worst <= 1 and frac <= 1e-3, (MANIPULATIONS[i].name, frac, worst)
        else:
            np.testing.assert_array_equal(got[b], want[b], err_msg=MANIPULATIONS[i].name)


def test_apply_on_device_matches_host_with_static_shapes(batch):
    """The default strategy ('auto': 'map' on CPU)."""
    raw, ids, d4, _, viewed = batch
    fn = jax.jit(lambda r, i, k: device_ops.apply_on_device(r, i, k, patch=PATCH))
    got = fn(raw, ids, d4)
    assert got.shape == (len(raw), PATCH, PATCH, 3) and got.dtype == jnp.uint8
    _check_against_host(np.asarray(got), viewed, ids)
    # Other ids and views reuse the compiled program: shapes never depend on them.
    got = fn(raw, np.roll(ids, 3), np.roll(d4, 1))
    assert got.shape == (len(raw), PATCH, PATCH, 3)
    assert fn._cache_size() == 1


def test_the_tables_strategy_agrees(batch):
    """The accelerators' strategy, run here on the CPU ('map', the CPU's, is the test above)."""
    raw, ids, _, manipulated, _ = batch
    got = jax.jit(lambda r, i: device_ops.manipulate(r, i, patch=PATCH, strategy="tables"))(raw, ids)
    _check_against_host(np.asarray(got), manipulated, ids)


def test_bad_input_is_named():
    raw = jnp.zeros((2, RAW, RAW, 3), jnp.uint8)
    ids = jnp.zeros(2, jnp.int32)
    with pytest.raises(ValueError, match="device_ops.manipulate: patch 32 needs raw crops of 64 px, got 48"):
        device_ops.manipulate(raw[:, :48, :48], ids, patch=PATCH)
    with pytest.raises(ValueError, match="must be uint8"):
        device_ops.manipulate(raw.astype(jnp.float32), ids, patch=PATCH)
    with pytest.raises(ValueError, match="manip_ids must be"):
        device_ops.manipulate(raw, jnp.zeros(3, jnp.int32), patch=PATCH)
    with pytest.raises(ValueError, match="strategy must be one of"):
        device_ops.manipulate(raw, ids, patch=PATCH, strategy="loop")
    with pytest.raises(ValueError, match="JPEG quality must be in 1..100"):
        device_ops.quant_tables(0)
    with pytest.raises(ValueError, match="needs sources of 64 px"):
        device_ops.resize(raw[:, :40, :40], 0.5, patch=PATCH)


def test_a_new_kind_is_one_entry_on_each_side(monkeypatch):
    """The extension point: a kind registered in manipulations.KINDS (host) and
    device_ops.DEVICE_KINDS (jitted) is cut, made and checked like the challenge's own."""
    from camjax.cameras import Manipulation

    invert = Manipulation("invert", "invert", 0.0)
    with pytest.raises(ValueError, match="kind 'invert', not registered"):
        manipulations.manipulate_patch(np.zeros((RAW, RAW, 3), np.uint8), PATCH, invert)
    monkeypatch.setitem(manipulations.KINDS, "invert", manipulations.Kind(host=lambda image, value: 255 - image))
    monkeypatch.setitem(device_ops.DEVICE_KINDS, "invert", lambda x, value, patch: 255 - device_ops._centre(x, patch))
    raw = _images(1, RAW, RAW, seed=3)[0]
    want = manipulations.manipulate_patch(raw, PATCH, invert)
    got = jax.jit(device_ops._branch(invert, PATCH))(jnp.asarray(raw))
    assert want.shape == (PATCH, PATCH, 3)
    np.testing.assert_array_equal(np.asarray(got), want)
