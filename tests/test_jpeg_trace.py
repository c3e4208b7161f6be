"""The JPEG quantisation trace: scipy's DCT as the reference transform, Pillow's own
quantisation table as the reference for what the trace must find."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from camjax_testdata import repo_config
from PIL import Image
from scipy.fft import dctn

from camjax import config_checks, models
from camjax.models import jpeg_trace
from camjax.models.layers import pixels_of, preprocess


def test_block_dct_is_scipys_orthonormal_dct_of_each_block():
    luma = np.random.default_rng(0).normal(0, 50, (2, 16, 24)).astype(np.float32)
    got = np.asarray(jpeg_trace.block_dct(jnp.asarray(luma)))
    blocks = luma.reshape(2, 2, 8, 3, 8).transpose(0, 1, 3, 2, 4).reshape(2, 6, 8, 8)
    want = dctn(blocks, axes=(2, 3), norm="ortho").reshape(2, 6, 64)
    np.testing.assert_allclose(got, want, atol=1e-3)


def _textured(side: int, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(0, 256, (side // 2, side // 2, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(noise).resize((side, side), Image.BILINEAR))


@pytest.mark.parametrize("quality", [75, 90, 95])
def test_the_trace_finds_the_step_of_the_files_own_table(quality):
    """For the low frequencies (where a textured image leaves non-zero coefficients), the
    largest step whose trace is above one half is the step in the file's luma table. (A step
    of 1 is not readable: the decoded pixels' rounding moves the coefficients by about 0.3.)"""
    buf = io.BytesIO()
    Image.fromarray(_textured(256)).save(buf, "JPEG", quality=quality, subsampling=0)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        table = np.array(im.quantization[0]).reshape(8, 8)  # natural (row-major) order
        decoded = np.asarray(im.convert("RGB"), np.float32)
    trace = np.asarray(jpeg_trace.quantisation_trace(jnp.asarray(decoded[None])))[0].reshape(8, 8, -1)
    low = [(u, v) for u in range(8) for v in range(8) if u + v <= 3 and 2 <= table[u, v] <= jpeg_trace.MAX_STEP]
    found = {
        (u, v): max([s for s in range(1, jpeg_trace.MAX_STEP + 1) if trace[u, v, s - 1] > 0.5] or [0]) for u, v in low
    }
    hits = sum(found[k] == table[k] for k in low)
    assert hits >= 0.8 * len(low), {k: (found[k], int(table[k])) for k in low}


def test_a_never_compressed_image_leaves_no_trace():
    noise = np.random.default_rng(2).integers(0, 256, (1, 128, 128, 3)).astype(np.float32)
    trace = np.asarray(jpeg_trace.quantisation_trace(jnp.asarray(noise)))[0]
    assert np.abs(trace[:, 1:]).max() < 0.35  # every frequency, steps 2..32: no lattice


@pytest.mark.parametrize("mode", ["tf", "torch", "caffe"])
def test_pixels_of_undoes_preprocess(mode):
    x = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    np.testing.assert_allclose(np.asarray(pixels_of(preprocess(jnp.asarray(x), mode), mode)), x, atol=1e-3)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_classifier_with_the_trace_feeds_it_to_the_head(dtype):
    config = repo_config("configs/camnet.py:quick").model
    config.jpeg_trace = 16
    model = models.create(config, 5, dtype=dtype)
    model.eval()
    images = preprocess(jnp.asarray(_textured(64)[None]), "tf")
    features = model.features(images)
    assert features.shape == (1, model.backbone.num_features + 16) and features.dtype == jnp.float32
    assert model(images, jnp.zeros((1,)))["logits"].shape == (1, 5)
    # the trace's features move the logits: its projection is part of the trained model
    grads = jax.grad(lambda m: m(images, jnp.zeros((1,)))["logits"].sum())(model)
    assert float(jnp.abs(grads.jpeg_trace.project.kernel.value).sum()) > 0


def test_a_negative_width_is_a_config_problem():
    config = repo_config("configs/camnet.py:quick")
    config.model.jpeg_trace = -1
    with pytest.raises(config_checks.ConfigError, match="model.jpeg_trace=-1"):
        config_checks.validate(config, num_devices=1, shapes=False)
