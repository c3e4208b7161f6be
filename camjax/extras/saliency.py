"""Saliency maps: gradient x input and Grad-CAM, generic and for a trained Classifier.

Both explain one score per example. The model must be in inference mode (BatchNorm running
statistics), so examples do not interact and the gradient of the summed scores is each
example's own gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from camjax.models import preprocess
from camjax.steps import ModelDef

# [B, ...] -> [B]: one score per example, e.g. the logit of the class to explain.
ScoreFn = Callable[[jax.Array], jax.Array]


def gradient_x_input(score_fn: ScoreFn, inputs: jax.Array) -> jax.Array:
    """d score / d input times the input, same shape as `inputs`: each input value's
    first-order contribution to the score (exact for a linear score without bias)."""
    grads = jax.grad(lambda x: score_fn(x).sum())(inputs)
    return grads * inputs


def grad_cam(feature_fn: ScoreFn, score_from_features: ScoreFn, inputs: jax.Array) -> jax.Array:
    """Grad-CAM [B, h, w] on the feature map [B, h, w, C] that `feature_fn` returns:
    ReLU of the channels weighted by their spatially averaged score gradient (Selvaraju et
    al. 2017). Non-negative; at the feature map's resolution (see `upsample`)."""
    fmap = feature_fn(inputs)
    grads = jax.grad(lambda f: score_from_features(f).sum())(fmap)
    weights = grads.mean(axis=(1, 2), keepdims=True)
    return jax.nn.relu((weights * fmap).sum(axis=-1))


def upsample(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    """[B, h, w] -> [B, H, W], bilinear (a Grad-CAM map onto its patch)."""
    return jax.image.resize(maps, (maps.shape[0], *size), method="linear")


def classifier_saliency(model_def: ModelDef, params, model_state, images, is_manipulated, targets) -> dict:
    """Both maps of a restored Classifier for uint8 patches [B, H, W, 3], explaining the logit
    of `targets` [B]: `grad_x_input` [B, H, W] (summed over colour channels, on the
    preprocessed input) and `grad_cam` [B, H, W] (last backbone feature map, upsampled)."""
    model = nnx.merge(model_def.eval, params, model_state, copy=True)
    x = preprocess(images, model_def.preprocess)
    rows = jnp.arange(x.shape[0])

    def score_of(inputs, fmap):
        features = model.features_from(inputs, fmap).astype(model.dtype)
        return model.head(features, is_manipulated)["logits"][rows, targets]

    def score(inputs):
        return score_of(inputs, model.feature_map(inputs))

    gxi = gradient_x_input(score, x).sum(axis=-1)
    cam = grad_cam(model.feature_map, functools.partial(score_of, x), x)
    return {"grad_x_input": gxi, "grad_cam": upsample(cam, x.shape[1:3])}
