"""`python -m camjax.convert` round trip: Keras weights file -> camjax checkpoint -> `load` features."""

import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import h5py
import keras
import numpy as np
import pytest
from flax import nnx
from keras.src.legacy.saving import legacy_h5_format
from test_models_resnet_mobilenet import numpy_keras_initialisers, randomise  # noqa: F401  (fixture)

from camjax import convert
from camjax.models import load, mobilenet, pretrained

ALPHA = 0.25


@pytest.fixture(scope="module")
def keras_model():
    model = keras.applications.MobileNet(weights=None, include_top=True, alpha=ALPHA, input_shape=(64, 64, 3))
    randomise(model)
    return model


def notop(model):
    """The include_top=False model sharing `model`'s backbone weights."""
    backbone = keras.applications.MobileNet(weights=None, include_top=False, alpha=ALPHA, input_shape=(None, None, 3))
    for layer in (layer for layer in backbone.layers if layer.weights):
        layer.set_weights(model.get_layer(layer.name).get_weights())
    return backbone


def save_legacy_h5(model, path):
    """The layout of the ImageNet files keras.applications downloads (weights only, by layer name)."""
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


@pytest.mark.parametrize("fmt", ["legacy_h5_notop", "keras_top"])
def test_convert_then_load_matches_keras(tmp_path, keras_model, fmt):
    if fmt == "legacy_h5_notop":
        weights = str(tmp_path / "mobilenet_notop.h5")
        save_legacy_h5(notop(keras_model), weights)
    else:
        weights = str(tmp_path / "mobilenet.keras")
        keras_model.save(weights)
    out = str(tmp_path / "converted")
    convert.main(
        [
            "--from",
            "keras",
            "--model",
            "mobilenet",
            "--weights",
            weights,
            "--out",
            out,
            "--kwargs",
            json.dumps({"alpha": ALPHA}),
        ]
    )

    meta = pretrained.read_meta(out)
    assert meta["model"] == "mobilenet" and meta["keras_application"] == "MobileNet"
    assert meta["include_top"] == (fmt == "keras_top") and meta["sha256"] == convert.sha256(weights)

    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    want = notop(keras_model).predict(x, verbose=0).mean(axis=(1, 2))
    got = load("mobilenet", out)(x)  # alpha comes from meta.json
    assert got.shape == want.shape == (2, int(1024 * ALPHA))
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()


def test_restore_rejects_other_models_and_widths(tmp_path, keras_model):
    out = str(tmp_path / "converted")
    backbone = nnx.eval_shape(lambda: mobilenet.MobileNet(alpha=ALPHA, rngs=nnx.Rngs(0)))
    convert.copy_keras_weights(backbone, keras_model)
    pretrained.save_backbone(out, "mobilenet", backbone, {"kwargs": {"alpha": ALPHA}})
    with pytest.raises(ValueError, match="not 'mobilenet_v2'"):
        pretrained.restore_backbone(backbone, out, "mobilenet_v2")
    wider = nnx.eval_shape(lambda: mobilenet.MobileNet(alpha=0.5, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="has shape"):
        pretrained.restore_backbone(wider, out)
    with pytest.raises(FileExistsError):
        pretrained.save_backbone(out, "mobilenet", backbone, {})


def test_convert_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        convert.convert_keras("mobilenet", str(tmp_path / "missing.h5"), str(tmp_path / "out"))
    bad = tmp_path / "weights.npz"
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match=r"\.h5 or \.keras"):
        convert.convert_keras("mobilenet", str(bad), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="no Keras application"):
        convert.convert_keras("camnet", str(bad), str(tmp_path / "out"))
