"""The train step under pmap and under sharded jit: same losses, global BatchNorm, no recompiles;
gradient accumulation makes the full batch's update."""

import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from camjax import steps

# Runs in a fresh interpreter: the device count must be set before JAX starts.
SCRIPT = textwrap.dedent(
    """
    import json, functools, sys
    import jax, jax.numpy as jnp, numpy as np, ml_collections
    from camjax import assembly
    from camjax.parallel import DataParallel, compile_count
    from camjax import defaults

    def fit_one_batch(mode, accum):
        config = defaults.load_config("configs/camnet.py:quick")
        config.model.kwargs.widths = (8, 16)
        config.model.head.hidden = (16, 8)
        config.model.head.dropout = (0.0, 0.0)  # dropout masks legitimately differ between layouts
        config.grad_accum = accum
        config.optim.learning_rate = 1e-2
        config.optim.ema_decay = 0.9  # the weight average rides along in the donated state of both layouts
        dp = DataParallel(mode)
        built = assembly.build(config.model, 4, dp, dtype=config.dtype, optim_config=config.optim, steps_per_epoch=10,
                               total_steps=100, seed=0)
        state = dp.put_state(built.host_state)
        step = built.train_step(config)
        rng = np.random.default_rng(0)
        batch = {  # one batch, fitted four times: its loss must fall
            "image": rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
            "label": rng.integers(0, 4, 16).astype(np.int32),
            "is_manipulated": (rng.random(16) < 0.5).astype(np.float32),
            "manipulation": rng.integers(0, 9, 16).astype(np.int32),
        }
        losses, compiles = [], []
        for i in range(4):
            state, metrics = step(state, dp.put_batch(batch))
            losses.append(dp.fetch_metrics(metrics)["train/loss"])
            compiles.append(compile_count())
        host = dp.get_state(state)
        stats = float(sum(np.abs(x).sum() for x in jax.tree.leaves(host.model_state)))
        average = float(sum(np.abs(x).sum() for x in jax.tree.leaves(host.ema)))
        return {"devices": dp.num_devices, "losses": losses, "compiles": compiles, "bn_stats": stats,
                "average": average}

    for item in sys.argv[1:]:  # mode:accum, each from the same initial state
        mode, accum = item.split(":")
        print(json.dumps({"run": item, **fit_one_batch(mode, int(accum))}), flush=True)
    """
)


def run(devices, *items):
    """SCRIPT on `devices` CPU devices, one record per `mode:accum` item."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, *items],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["run"] for r in records] == list(items)
    return records


@pytest.mark.slow
def test_every_layout_fits_a_batch_alike():
    """The same batch fitted four times from the same state: sharded and pmap on 8 devices,
    sharded on 1, and with 2 micro-batches on 2 (three interpreters, one per device count)."""
    sharded, pmapped = run(8, "sharded:1", "pmap:1")
    (one,) = run(1, "sharded:1")
    (accum,) = run(2, "sharded:2")
    assert (sharded["devices"], pmapped["devices"], one["devices"], accum["devices"]) == (8, 8, 1, 2)
    # Global BatchNorm statistics in both layouts -> the same loss curve and running stats.
    assert sharded["losses"] == pytest.approx(pmapped["losses"], rel=2e-4)
    assert sharded["bn_stats"] == pytest.approx(pmapped["bn_stats"], rel=2e-4)
    assert sharded["average"] == pytest.approx(pmapped["average"], rel=2e-4)
    assert sharded["losses"][-1] < sharded["losses"][0]
    assert one["losses"] == pytest.approx(sharded["losses"], rel=2e-4)
    # Micro-batches see half the batch each: BatchNorm statistics differ, so the losses are
    # close but not equal; the first step's parameters are the same, so its loss is too.
    assert accum["losses"][0] == pytest.approx(one["losses"][0], rel=0.05)
    for r in (sharded, pmapped, one, accum):
        assert r["compiles"][1] == r["compiles"][-1], f"{r['run']} recompiled after the first step: {r['compiles']}"


class _NoBatchNorm(nnx.Module):
    """Conv -> ReLU -> mean pool -> Dense: per-example losses independent of the batch."""

    dtype = jnp.float32

    def __init__(self, classes, rngs):
        self.conv = nnx.Conv(3, 8, (3, 3), strides=2, rngs=rngs)
        self.dense = nnx.Linear(8 + 1, classes, rngs=rngs)

    def features(self, x):
        return nnx.relu(self.conv(x)).mean((1, 2))

    def head(self, features, is_manipulated):
        return {"logits": self.dense(jnp.concatenate([features, is_manipulated[:, None]], -1))}

    def __call__(self, x, is_manipulated, rngs=None):
        return self.head(self.features(x), is_manipulated)


def _sgd_steps(batches, *, accum=1, ema_decay=0.0, data=None, **config):
    """SGD steps of _NoBatchNorm on `batches`: (model_def, final state, parameters after each
    step with the initial ones first, the last step's metrics)."""
    config = ml_collections.ConfigDict(
        dict(
            grad_accum=accum,
            label_smoothing=0.0,
            aux_loss_weight=0.0,
            nonfinite="stop",
            data=data or dict(patch=16),
            optim=dict(ema_decay=ema_decay),
            **config,
        )
    )
    tx = optax.sgd(0.5)  # the update is the gradient itself: Adam's first step would only show its sign
    model_def, state = steps.init_state(_NoBatchNorm(4, nnx.Rngs(0)), tx, "tf", 0, ema=ema_decay > 0)
    step = jax.jit(functools.partial(steps.train_step, model_def=model_def, tx=tx, config=config), donate_argnums=0)
    trail, metrics = [jax.tree.map(np.array, state.params)], None
    for batch in batches:
        state, metrics = step(state, batch)
        trail.append(jax.tree.map(np.array, state.params))
    return model_def, state, trail, metrics


def _random_batches(seed, count, size):
    rng = np.random.default_rng(seed)
    return [
        {
            "image": rng.integers(0, 256, (size, 16, 16, 3), dtype=np.uint8),
            "label": rng.integers(0, 4, size).astype(np.int32),
            "is_manipulated": (rng.random(size) < 0.5).astype(np.float32),
            "manipulation": np.zeros(size, np.int32),
        }
        for _ in range(count)
    ]


def test_an_outliers_target_is_the_uniform_distribution():
    """With data.outliers the loss is the known patches' (class-weighted) mean cross-entropy
    plus lambda times the outliers' mean cross-entropy to the uniform distribution."""
    from scipy.special import logsumexp

    logits = np.random.default_rng(3).normal(size=(6, 5)).astype(np.float32)
    labels = np.array([2, -1, 0, -1, 4, 1], np.int32)
    nll = logsumexp(logits, axis=1) - np.where(labels < 0, logits.mean(1), logits[np.arange(6), labels])
    known = labels >= 0
    config = ml_collections.ConfigDict(dict(label_smoothing=0.0, data=dict(outliers="x"), outlier_loss_weight=0.25))
    loss = steps.class_loss(jnp.asarray(logits), jnp.asarray(labels), config)
    assert float(loss) == pytest.approx(nll[known].mean() + 0.25 * nll[~known].mean(), rel=1e-5)
    class_weights = np.array([0.5, 1.0, 2.0, 1.0, 3.0], np.float32)
    weighted = steps.class_loss(jnp.asarray(logits), jnp.asarray(labels), config, class_weights)
    w = class_weights[labels[known]]
    expected = (w * nll[known]).sum() / w.sum() + 0.25 * nll[~known].mean()
    assert float(weighted) == pytest.approx(expected, rel=1e-5)
    config.data.outliers = ""  # without outliers: the plain cross-entropy
    plain = steps.class_loss(jnp.asarray(logits[known]), jnp.asarray(labels[known]), config)
    assert float(plain) == pytest.approx(nll[known].mean(), rel=1e-5)


def test_outlier_batches_train_towards_not_knowing():
    """A model taught one class on everything, then shown photos of other cameras (label -1,
    `data.outliers`): its predictions on those go back towards the uniform distribution."""
    known, outliers = _random_batches(4, 8, 8), _random_batches(5, 12, 8)
    for b in known:
        b["label"][:] = 0
    for b in outliers:
        b["label"][:] = -1
    config = dict(data=dict(patch=16, outliers="other-cameras"), outlier_loss_weight=0.5)
    model_def, sure, _, metrics = _sgd_steps(known, **config)
    assert float(metrics["train/accuracy"]) == 1.0
    _, exposed, _, metrics = _sgd_steps(known + outliers, **config)
    assert float(metrics["train/accuracy"]) == 0.0  # no known label in the last batch: nothing counted

    def entropy(s):
        probs = jax.nn.softmax(
            steps.predict_logits(
                s.params, s.model_state, outliers[0]["image"], outliers[0]["is_manipulated"], model_def=model_def
            )
        )
        return float(-(probs * jnp.log(probs)).sum(-1).mean())

    assert entropy(sure) < 0.5 * np.log(4)
    assert entropy(exposed) == pytest.approx(np.log(4), abs=0.05)


def test_grad_accumulation_makes_the_full_batch_update():
    batches = _random_batches(0, 3, 16)
    _, _, full_trail, full_metrics = _sgd_steps(batches)
    full, initial = full_trail[-1], full_trail[0]
    for accum in (2, 4):
        _, _, trail, metrics = _sgd_steps(batches, accum=accum)
        for a, b, p0 in zip(jax.tree.leaves(trail[-1]), jax.tree.leaves(full), jax.tree.leaves(initial)):
            assert not np.allclose(b, p0)  # the steps moved every parameter
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert metrics["train/loss"] == pytest.approx(float(full_metrics["train/loss"]), rel=1e-5)
        assert metrics["train/grad_norm"] == pytest.approx(float(full_metrics["train/grad_norm"]), rel=1e-5)


def test_weight_average_follows_the_steps_and_is_what_inference_uses():
    batches = _random_batches(1, 30, 8)
    model_def, state, trail, _ = _sgd_steps(batches, ema_decay=0.9)
    _, plain, plain_trail, _ = _sgd_steps(batches)
    assert plain.ema is None
    # The average is only read: the weights take the same steps with and without it.
    for a, b in zip(jax.tree.leaves(trail), jax.tree.leaves(plain_trail)):
        np.testing.assert_array_equal(a, b)
    # e_0 = p_0; e_t+1 = d_t e_t + (1 - d_t) p_t+1 with d_t = min(0.9, (1 + t) / (10 + t))
    expected = trail[0]
    for t, params in enumerate(trail[1:]):
        d = min(0.9, (1 + t) / (10 + t))
        expected = jax.tree.map(lambda e, p, d=d: d * e + (1 - d) * p, expected, params)
    for a, b in zip(jax.tree.leaves(state.ema["params"]), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(jax.tree.leaves(state.ema["params"])[0], jax.tree.leaves(state.params)[0])
    # Inference reads the average, not the last weights.
    batch = batches[0]
    probs = steps.eval_step(state, batch, model_def=model_def)
    from_average = steps.eval_step(plain.replace(params=state.ema["params"]), batch, model_def=model_def)
    from_last = steps.eval_step(plain, batch, model_def=model_def)
    np.testing.assert_allclose(probs, from_average, rtol=1e-6)
    assert not np.allclose(probs, from_last, atol=1e-4)
