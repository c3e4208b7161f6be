"""Imports Keras Applications weights into camjax backbones, layer for layer.

Contract: every Keras-faithful backbone has `keras_layers() -> [(keras_name, nnx module)]`
in the order of the Keras model's weighted layers (`[l for l in model.layers if l.weights]`),
so the copy is a checked zip - count, type, name and every shape - never a guess.

    python -m camjax.convert --from keras --model resnet50 \
        --weights resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 --out weights/resnet50
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import zipfile
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from camjax import cli

# Classifier layers that only exist with include_top=True (keras.applications' names).
TOP_LAYER_NAMES = frozenset({"predictions", "conv_preds"})


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower().replace("2_d", "2d")


def _auto_named(layer) -> bool:
    """True for Keras' generated names (`conv2d_3`, `batch_normalization`): nothing to compare."""
    return re.fullmatch(rf"{_snake(type(layer).__name__)}(_\d+)?", layer.name) is not None


def _keras_arrays(layer) -> dict[str, np.ndarray | None]:
    """The layer's weights by role, in Keras' layouts; None where the layer has none."""
    kind = type(layer).__name__

    def get(attr):
        v = getattr(layer, attr, None)
        return None if v is None else np.asarray(v)

    if kind in ("Conv2D", "DepthwiseConv2D", "Dense"):
        return {"kernel": get("kernel"), "bias": get("bias")}
    if kind == "BatchNormalization":
        return {
            "scale": get("gamma"),
            "bias": get("beta"),
            "mean": get("moving_mean"),
            "var": get("moving_variance"),
        }
    raise ValueError(f"Keras layer {layer.name!r}: unsupported weighted layer type {kind}")


def _target(kind: str, module: nnx.Module, where: str) -> None:
    """Checks the NNX module is the kind of layer the Keras layer is."""
    ok = {
        "Conv2D": isinstance(module, nnx.Conv) and module.feature_group_count == 1,
        "DepthwiseConv2D": isinstance(module, nnx.Conv)
        and module.feature_group_count == module.in_features
        and module.in_features > 1,
        "BatchNormalization": isinstance(module, nnx.BatchNorm),
        "Dense": isinstance(module, nnx.Linear),
    }[kind]
    if not ok:
        raise ValueError(f"{where}: Keras {kind} but camjax module is {type(module).__name__}")


def _keras_weighted_layers(keras_model, n_backbone: int) -> list:
    layers = [layer for layer in keras_model.layers if layer.weights]
    extra = layers[n_backbone:]
    if len(layers) < n_backbone or any(layer.name not in TOP_LAYER_NAMES for layer in extra):
        raise ValueError(
            f"Keras model {keras_model.name!r} has {len(layers)} weighted layers, the camjax backbone "
            f"{n_backbone} (+ top layers named {sorted(TOP_LAYER_NAMES)}); extra: {[layer.name for layer in extra][:5]}"
        )
    return layers[:n_backbone]


def copy_keras_weights(backbone: nnx.Module, keras_model) -> None:
    """Copies a Keras application's weights into `backbone` in place; raises naming the layer."""
    targets = backbone.keras_layers()
    sources = _keras_weighted_layers(keras_model, len(targets))
    for i, (layer, (name, module)) in enumerate(zip(sources, targets)):
        where = f"layer {i} (Keras {layer.name!r}, camjax {name!r})"
        if not _auto_named(layer) and layer.name != name:
            raise ValueError(f"{where}: names differ - the backbone's layer order does not match Keras'")
        kind = type(layer).__name__
        arrays = _keras_arrays(layer)
        _target(kind, module, where)
        if kind == "DepthwiseConv2D" and arrays["kernel"] is not None:
            kh, kw, c, m = arrays["kernel"].shape  # (.., in, multiplier) -> (.., 1, in * multiplier)
            arrays["kernel"] = arrays["kernel"].reshape(kh, kw, 1, c * m)
        updates = []
        for attr, value in arrays.items():
            var = getattr(module, attr, None)
            if (value is None) != (var is None):
                state = {True: "absent", False: "present"}
                raise ValueError(f"{where}: {attr} {state[value is None]} in Keras, {state[var is None]} in camjax")
            if value is None:
                continue
            if tuple(var.shape) != value.shape:
                raise ValueError(f"{where}: {attr} shape {value.shape} in Keras, {tuple(var.shape)} in camjax")
            updates.append((var, value))
        for var, value in updates:  # a whole new array: no per-shape scatter to compile
            var.set_value(jnp.asarray(np.asarray(value, dtype=np.dtype(var.dtype))))


def _saved_layer_names(path: str) -> set[str]:
    """Layer names present in a Keras weights file (.h5 legacy or Keras 3, or .keras)."""
    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
        return {layer.get("config", {}).get("name", layer.get("name")) for layer in config["config"]["layers"]}
    import h5py

    names: set[str] = set()
    with h5py.File(path, "r") as f:
        f.visit(lambda p: names.update(p.split("/")))
    return names


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_keras(model_name: str, weights: str, out_dir: str, **model_kwargs) -> dict:
    """Builds the Keras application, loads `weights`, copies them into camjax and saves."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    from camjax.models import pretrained, registry

    spec = registry.get(model_name)
    if spec.keras_application is None:
        raise ValueError(f"model {model_name!r} has no Keras application to import from")
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{weights}: no such weights file")
    if not weights.endswith((".h5", ".keras")):
        raise ValueError(f"{weights}: expected a .h5 or .keras Keras weights file")
    include_top = bool(_saved_layer_names(weights) & TOP_LAYER_NAMES)
    app = getattr(keras.applications, spec.keras_application)
    keras_model = app(weights=None, include_top=include_top, **model_kwargs)
    keras_model.load_weights(weights)
    # Abstract build: every variable is about to be replaced, so skip the initialisers.
    backbone = nnx.eval_shape(lambda: spec.build(rngs=nnx.Rngs(0), **model_kwargs))
    copy_keras_weights(backbone, keras_model)
    missing = [
        jax.tree_util.keystr(p)
        for p, v in jax.tree.leaves_with_path(nnx.state(backbone))
        if not isinstance(v, jax.Array)
    ]
    if missing:
        raise ValueError(f"{model_name}: keras_layers() does not cover {missing[:5]}")
    meta = {
        "model": model_name,
        "keras_application": spec.keras_application,
        "kwargs": model_kwargs,
        "include_top": include_top,
        "source": os.path.abspath(weights),
        "sha256": sha256(weights),
    }
    pretrained.save_backbone(out_dir, model_name, backbone, meta)
    return meta


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m camjax.convert", description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", choices=["keras"], default="keras")
    parser.add_argument("--model", required=True, help="registered backbone name, e.g. resnet50")
    parser.add_argument("--weights", required=True, help="Keras .h5 or .keras file, with or without top")
    parser.add_argument("--out", required=True, help="output directory (orbax checkpoint + meta.json)")
    parser.add_argument(
        "--kwargs", default="{}", help="JSON keyword args for both Keras and camjax builders, e.g. '{\"alpha\": 0.25}'"
    )
    args = parser.parse_args(argv)
    meta = cli.run_or_exit(convert_keras, args.model, args.weights, args.out, **json.loads(args.kwargs))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
