"""The pure train and eval steps: (state, batch) -> (state, metrics), (state, batch) -> probs.

Both are plain functions of pytrees built on `nnx.split`/`nnx.merge`; `camjax.parallel`
wraps the same function with `jax.jit` + shardings or with `jax.pmap` (then `axis_name`
names the device axis for gradient and metric averaging).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from camjax.data import device_ops
from camjax.models import Classifier, preprocess


@struct.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State
    model_state: nnx.State  # BatchNorm statistics and any other non-parameter variables
    opt_state: Any
    rng: jax.Array
    # optim.ema_decay > 0: {"params", "model_state"} averaged over the steps, which validation,
    # checkpoints' evaluation and predict use (`inference_weights`); None otherwise.
    ema: Any = None


@struct.dataclass
class ModelDef:
    """The static half of a split model: graph definitions for training and inference."""

    train: nnx.GraphDef = struct.field(pytree_node=False)
    eval: nnx.GraphDef = struct.field(pytree_node=False)
    preprocess: str = struct.field(pytree_node=False)


def init_state(
    model: Classifier, tx: optax.GradientTransformation, preprocess_mode: str, seed: int, *, ema: bool = False
):
    """Splits a freshly built model into its static ModelDef and a TrainState (with `ema`, an
    average of the weights that starts as a copy of them)."""
    model.train()
    train_def, params, model_state = nnx.split(model, nnx.Param, ...)
    model.eval()
    eval_def = nnx.graphdef(model)
    model.train()
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
        # Copies, not aliases: the train step donates the state, and one buffer cannot be donated twice.
        ema=jax.tree.map(jnp.copy, {"params": params, "model_state": model_state}) if ema else None,
    )
    return ModelDef(train_def, eval_def, preprocess_mode), state


def inference_weights(state: TrainState) -> tuple[nnx.State, nnx.State]:
    """(params, model_state) to predict with: the weight average when the run keeps one."""
    if state.ema is not None:
        return state.ema["params"], state.ema["model_state"]
    return state.params, state.model_state


def ema_decay(decay: float, step: jax.Array) -> jax.Array:
    """The average's decay at `step`: `decay`, but never above (1 + step) / (10 + step), so the
    first steps' random weights leave the average quickly (TensorFlow's ExponentialMovingAverage
    with num_updates)."""
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def update_ema(ema, new, decay: jax.Array):
    """ema <- decay * ema + (1 - decay) * new, leaf by leaf (any non-float leaf takes the new value)."""

    def mix(old, value):
        if not jnp.issubdtype(value.dtype, jnp.floating):
            return value
        return (decay * old + (1.0 - decay) * value).astype(value.dtype)

    return jax.tree.map(mix, ema, new)


def cross_entropy(logits, labels, *, label_smoothing=0.0, weights=None):
    num_classes = logits.shape[-1]
    targets = (
        optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
        if label_smoothing
        else (jax.nn.one_hot(labels, num_classes))
    )
    losses = optax.softmax_cross_entropy(logits, targets)
    if weights is None:
        return losses.mean()
    return (losses * weights).sum() / jnp.maximum(weights.sum(), 1e-9)


def class_loss(logits, labels, config, class_weights=None):
    """The class term: the (class-weighted) mean cross-entropy over the known cameras' patches
    and, with `data.outliers`, `outlier_loss_weight` times the mean over the outliers' patches
    (label `sources.OUTLIER`) of the cross-entropy to the uniform distribution,
    L = E_known[CE] + lambda E_outlier[CE_u] (Hendrycks et al. 2019), whatever share of the
    batch the outliers are. Without outliers it is the plain loss, to the last bit."""
    smoothing = config.label_smoothing
    if not config.data.get("outliers"):
        weights = None if class_weights is None else jnp.asarray(class_weights)[labels]
        return cross_entropy(logits, labels, label_smoothing=smoothing, weights=weights)
    known = (labels >= 0).astype(jnp.float32)
    labels = jnp.maximum(labels, 0)  # an outlier's row of the known term has weight 0
    weights = known if class_weights is None else known * jnp.asarray(class_weights)[labels]
    known_term = cross_entropy(logits, labels, label_smoothing=smoothing, weights=weights)
    uniform = optax.softmax_cross_entropy(logits, jnp.full_like(logits, 1.0 / logits.shape[-1]))
    outlier_term = (uniform * (1.0 - known)).sum() / jnp.maximum((1.0 - known).sum(), 1.0)
    return known_term + config.outlier_loss_weight * outlier_term


def _forward_loss(params, model_state, batch, rng, *, model_def, config, class_weights):
    model = nnx.merge(model_def.train, params, model_state, copy=True)
    images = preprocess(batch["image"], model_def.preprocess)
    out = model(images, batch["is_manipulated"], rngs=nnx.Rngs(dropout=rng))
    labels = batch["label"]
    loss = class_loss(out["logits"], labels, config, class_weights)
    hits = jnp.argmax(out["logits"], -1) == labels
    if config.data.get("outliers"):  # the accuracy of the known cameras' patches only
        known = labels >= 0
        accuracy = (hits & known).sum() / jnp.maximum(known.sum(), 1)
    else:
        accuracy = jnp.mean(hits)
    metrics = {"train/ce": loss, "train/accuracy": accuracy}
    if "manip_logits" in out and config.aux_loss_weight > 0:
        aux = cross_entropy(out["manip_logits"], batch["manipulation"])
        loss = loss + config.aux_loss_weight * aux
        metrics["train/manip_accuracy"] = jnp.mean(jnp.argmax(out["manip_logits"], -1) == batch["manipulation"])
    metrics["train/loss"] = loss
    new_model_state = nnx.state(model, nnx.Not(nnx.Param))
    return loss, (new_model_state, metrics)


def train_step(state: TrainState, batch, *, model_def: ModelDef, tx, config, class_weights=None, axis_name=None):
    """One optimizer update; with config.grad_accum > 1 the batch is split into micro-batches
    scanned in order (BatchNorm statistics update after each), gradients averaged."""
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    if "raw" in batch:  # data.manipulate_on='device': the manipulations and D4 views happen here
        batch = {k: v for k, v in batch.items() if k not in ("raw", "d4")} | {
            "image": device_ops.apply_on_device(
                batch["raw"], batch["manipulation"], batch["d4"], patch=config.data.patch
            )
        }
    if axis_name is not None:
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    grad_fn = jax.grad(
        functools.partial(_forward_loss, model_def=model_def, config=config, class_weights=class_weights),
        has_aux=True,
    )
    accum = config.grad_accum
    if accum == 1:
        grads, (model_state, metrics) = grad_fn(state.params, state.model_state, batch, rng)
    else:
        # Micro-batch i takes every accum-th example, so a batch sharded on its first axis
        # stays local to each device.
        micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1), batch)

        def body(carry, xs):
            grads_sum, model_state = carry
            mb, i = xs
            g, (model_state, m) = grad_fn(state.params, model_state, mb, jax.random.fold_in(rng, i))
            return (jax.tree.map(jnp.add, grads_sum, g), model_state), m

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (grads, model_state), metrics = jax.lax.scan(body, (zeros, state.model_state), (micro, jnp.arange(accum)))
        grads = jax.tree.map(lambda g: g / accum, grads)
        metrics = jax.tree.map(jnp.mean, metrics)
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        metrics = jax.lax.pmean(metrics, axis_name)
        # Each replica normalised with the global statistics already (BatchNorm axis_name);
        # averaging keeps the running statistics identical across replicas.
        model_state = jax.lax.pmean(model_state, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["train/grad_norm"] = optax.global_norm(grads)
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state)
    if state.ema is not None:
        decay = ema_decay(config.optim.ema_decay, state.step)
        new_state = new_state.replace(ema=update_ema(state.ema, {"params": params, "model_state": model_state}, decay))
    if config.nonfinite == "skip":
        # A non-finite loss or gradient leaves the state as it was (the step counter moves on,
        # so the next batch draws fresh dropout); the host counts these steps.
        finite = jnp.isfinite(metrics["train/loss"]) & jnp.isfinite(metrics["train/grad_norm"])
        new_state = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old), new_state, state.replace(step=state.step + 1)
        )
        metrics["train/nonfinite_steps"] = 1.0 - finite.astype(jnp.float32)
    return new_state, metrics


def predict_features_and_logits(params, model_state, images, is_manipulated, *, model_def: ModelDef):
    """Inference (BatchNorm running statistics, no dropout): the head's input features
    (float32), the embedding the feature-space open-set score measures distances in
    (`camjax.calibration.FeatureDensity`), and the logits computed from them."""
    model = nnx.merge(model_def.eval, params, model_state, copy=True)
    features = model.features(preprocess(images, model_def.preprocess))
    return features, model.head(features.astype(model.dtype), is_manipulated)["logits"]


def predict_logits(params, model_state, images, is_manipulated, *, model_def: ModelDef):
    """Inference logits (BatchNorm running statistics, no dropout)."""
    return predict_features_and_logits(params, model_state, images, is_manipulated, model_def=model_def)[1]


def eval_step(state: TrainState, batch, *, model_def: ModelDef, axis_name=None):
    """Class probabilities (float32) of a batch, no TTA; evaluation adds views via camjax.tta."""
    logits = predict_logits(*inference_weights(state), batch["image"], batch["is_manipulated"], model_def=model_def)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
