"""The plateau tracker follows Keras' ReduceLROnPlateau; the plateau scale reaches the update."""

import importlib.util
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import require_reference

from camjax import optim


def keras_lrs(values, **kwargs):
    """The learning rates Keras' own callback sets for a sequence of epoch-end values."""
    require_reference(importlib.util.find_spec("keras") is not None, "Keras (pip install -e '.[dev]')")
    import keras

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1.0), loss="mse")
    callback = keras.callbacks.ReduceLROnPlateau(monitor="val_score", mode="max", verbose=0, **kwargs)
    callback.set_model(model)
    callback.on_train_begin()
    lrs = []
    for epoch, v in enumerate(values):
        callback.on_epoch_end(epoch, {"val_score": v})
        lrs.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
    return lrs


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(patience=2, factor=0.5, cooldown=0, min_lr=0.0, min_delta=1e-4),
        dict(patience=1, factor=0.1, cooldown=2, min_lr=0.01, min_delta=0.0),
        dict(patience=3, factor=0.5, cooldown=1, min_lr=0.2, min_delta=0.05),
    ],
)
def test_plateau_matches_keras(kwargs):
    rng = np.random.default_rng(0)
    values = list(np.round(np.cumsum(rng.normal(0.01, 0.05, size=40)), 3))
    tracker = optim.PlateauTracker(
        patience=kwargs["patience"],
        factor=kwargs["factor"],
        cooldown=kwargs["cooldown"],
        min_scale=kwargs["min_lr"],
        min_delta=kwargs["min_delta"],
        mode="max",
    )
    ours = [tracker.update(v) for v in values]
    np.testing.assert_allclose(ours, keras_lrs(values, **kwargs), rtol=1e-6)
    assert min(ours) < 1.0, "the sequence should trigger at least one reduction"


def test_plateau_state_round_trip_and_errors():
    t = optim.PlateauTracker(patience=1, factor=0.5)
    for v in [0.5, 0.4, 0.3]:
        t.update(v)
    t2 = optim.PlateauTracker.from_state_dict(t.state_dict())
    assert t2 == t and t.scale == 0.25
    with pytest.raises(ValueError, match="not finite"):
        t.update(float("nan"))
    with pytest.raises(ValueError, match="factor"):
        optim.PlateauTracker(factor=1.5)


def _optim_config(**kw):
    c = ml_collections.ConfigDict(
        dict(learning_rate=0.1, b1=0.9, b2=0.999, weight_decay=0.0, schedule="plateau", warmup_epochs=0.0)
    )
    c.update(kw)
    return c


def test_plateau_scale_multiplies_the_update():
    tx = optim.make_optimizer(_optim_config(), steps_per_epoch=10, total_steps=100)
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.array([1.0, -2.0, 3.0])}
    state = tx.init(params)
    full, _ = tx.update(grads, state, params)
    state = optim.set_plateau_scale(state, 0.25)
    assert optim.get_plateau_scale(state) == 0.25
    quarter, _ = tx.update(grads, state, params)
    np.testing.assert_allclose(quarter["w"], 0.25 * full["w"], rtol=1e-6)
    # Adam's first step moves each weight by -lr * sign(grad)
    np.testing.assert_allclose(full["w"], -0.1 * np.sign(grads["w"]), rtol=1e-3)


def test_warmup_and_cosine_schedules():
    s = optim.learning_rate_schedule(_optim_config(schedule="cosine", warmup_epochs=1.0), 10, 110)
    assert float(s(0)) == 0.0 and abs(float(s(10)) - 0.1) < 1e-6 and float(s(110)) < 1e-6
    with pytest.raises(ValueError, match="schedule"):
        optim.learning_rate_schedule(_optim_config(schedule="step"), 10, 100)
    assert isinstance(optim.make_optimizer(_optim_config(weight_decay=1e-4), 10, 100), optax.GradientTransformation)


def test_constant_rate_with_a_final_linear_decay():
    """Warmup 1 epoch, constant, then the last 2 epochs of 10 go linearly to zero."""
    s = optim.learning_rate_schedule(_optim_config(schedule="constant", warmup_epochs=1.0, decay_epochs=2.0), 10, 100)
    rates = np.array([float(s(i)) for i in range(101)])
    np.testing.assert_allclose(rates[[0, 5, 10, 50, 80]], [0.0, 0.05, 0.1, 0.1, 0.1], atol=1e-7)
    np.testing.assert_allclose(rates[[90, 95, 100]], [0.05, 0.025, 0.0], atol=1e-7)
    assert np.all(np.diff(rates[80:]) <= 0) and np.all(np.diff(rates[:11]) >= 0)
    with pytest.raises(ValueError, match="decay_epochs"):
        optim.learning_rate_schedule(_optim_config(schedule="cosine", decay_epochs=1.0), 10, 100)


def test_clip_norm_scales_a_large_gradient_down_to_the_norm_before_adam():
    """A gradient of global norm 10 clipped to 1 makes exactly the update of that gradient / 10;
    one already under the norm is left as it is."""
    params = {"w": jnp.zeros(3), "b": jnp.zeros(2)}
    grads = {"w": jnp.array([6.0, 0.0, 0.0]), "b": jnp.array([0.0, 8.0])}  # global norm 10
    clipped = optim.make_optimizer(_optim_config(clip_norm=1.0), 10, 100)
    plain = optim.make_optimizer(_optim_config(), 10, 100)
    state_c, state_p = clipped.init(params), plain.init(params)
    for _ in range(3):  # Adam's moments carry the scale: several steps, not only the first
        up_c, state_c = clipped.update(grads, state_c, params)
        up_p, state_p = plain.update(jax.tree.map(lambda g: g / 10.0, grads), state_p, params)
        for a, b in zip(jax.tree.leaves(up_c), jax.tree.leaves(up_p)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    small = jax.tree.map(lambda g: g / 20.0, grads)  # norm 0.5: unchanged
    up_c, _ = clipped.update(small, clipped.init(params), params)
    up_p, _ = plain.update(small, plain.init(params), params)
    for a, b in zip(jax.tree.leaves(up_c), jax.tree.leaves(up_p)):
        np.testing.assert_array_equal(a, b)
    # and the plateau scale is still found in the clipped chain
    assert optim.get_plateau_scale(optim.set_plateau_scale(state_c, 0.5)) == 0.5
