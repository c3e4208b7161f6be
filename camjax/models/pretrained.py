"""Saved backbone weights (the output of `camjax.convert`) and the feature-extraction API.

Layout of a pretrained directory:
    DIR/backbone/   orbax checkpoint of the backbone's state as a plain nested dict
    DIR/meta.json   model name, backbone class, builder kwargs, Keras application, source file, sha256
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from camjax.models import registry

WEIGHTS = nnx.Any(nnx.Param, nnx.BatchStat)  # what a backbone checkpoint holds


def save_backbone(out_dir: str, model_name: str, backbone: nnx.Module, meta: dict[str, Any]) -> None:
    """Writes `backbone`'s parameters and BatchNorm statistics plus meta.json under `out_dir`."""
    out_dir = os.path.abspath(out_dir)
    path = os.path.join(out_dir, "backbone")
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists; choose an empty --out directory")
    os.makedirs(out_dir, exist_ok=True)
    state = nnx.state(backbone, WEIGHTS).to_pure_dict()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, state)
    meta = {**meta, "model": model_name, "backbone_class": type(backbone).__name__}
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)


def read_meta(in_dir: str) -> dict[str, Any]:
    path = os.path.join(in_dir, "meta.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing; is {in_dir} a `python -m camjax.convert` output directory?")
    with open(path) as f:
        return json.load(f)


def _match(target, saved, where: str):
    """`saved` (orbax turns int keys into strings) in `target`'s structure, shapes and dtypes."""
    if isinstance(target, dict):
        saved = {str(k): v for k, v in saved.items()} if isinstance(saved, dict) else {}
        if set(map(str, target)) != set(saved):
            diff = sorted(set(map(str, target)) ^ set(saved))[:5]
            raise ValueError(f"{where}: saved variables differ from the backbone's: {diff}")
        return {k: _match(v, saved[str(k)], f"{where}/{k}") for k, v in target.items()}
    if tuple(saved.shape) != tuple(target.shape):
        raise ValueError(f"{where} has shape {tuple(saved.shape)}, the backbone {tuple(target.shape)}")
    return jnp.asarray(saved, target.dtype)


def restore_backbone(backbone: nnx.Module, in_dir: str, model_name: str | None = None) -> dict[str, Any]:
    """Loads a saved backbone into `backbone` in place; returns its meta. Raises on any mismatch."""
    in_dir = os.path.abspath(in_dir)
    meta = read_meta(in_dir)
    if model_name is not None and meta["model"] != model_name:
        raise ValueError(f"{in_dir} holds {meta['model']!r} weights, not {model_name!r}")
    if meta["backbone_class"] != type(backbone).__name__:
        raise ValueError(f"{in_dir} holds a {meta['backbone_class']}, not a {type(backbone).__name__}")
    state = nnx.state(backbone, WEIGHTS)
    target = state.to_pure_dict()
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(os.path.join(in_dir, "backbone"))
    try:
        restored = _match(target, restored, os.path.join(in_dir, "backbone"))
    except ValueError as e:
        raise ValueError(f"{e} (saved with kwargs {meta.get('kwargs')})") from None
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(backbone, state)
    return meta


def load(name: str, checkpoint_dir: str, **model_kwargs) -> Callable[[np.ndarray], np.ndarray]:
    """Embedding API: a jitted float32 NHWC batch (already preprocessed) -> pooled features.

    Builder kwargs saved by the converter (e.g. alpha) are the defaults; `model_kwargs` override.
    The backbone runs in inference mode (BatchNorm with its moving statistics).
    """
    kwargs = {**read_meta(checkpoint_dir).get("kwargs", {}), **model_kwargs}
    spec = registry.get(name)
    backbone = nnx.eval_shape(lambda: spec.build(rngs=nnx.Rngs(0), **kwargs))  # restore fills it
    restore_backbone(backbone, checkpoint_dir, name)
    backbone.eval()
    graphdef, state = nnx.split(backbone)
    if not all(isinstance(v, jax.Array) for v in jax.tree.leaves(state)):
        raise ValueError(f"{name}: the backbone holds state beyond parameters and BatchNorm statistics")

    @jax.jit
    def features(state, images):
        fmap = nnx.merge(graphdef, state)(images)
        return fmap.astype(jnp.float32).mean(axis=(1, 2))

    def embed(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.ndim != 4:
            raise ValueError(f"expected an NHWC batch, got shape {images.shape}")
        return np.asarray(features(state, images))

    return embed
