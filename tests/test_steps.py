"""The train step under pmap and under sharded jit: same losses, global BatchNorm, no recompiles."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

# Runs in a fresh interpreter: the device count must be set before JAX starts.
SCRIPT = textwrap.dedent(
    """
    import json, functools, sys
    import jax, jax.numpy as jnp, numpy as np, ml_collections
    from camjax import models, optim, steps
    from camjax.parallel import DataParallel, bn_axis_name, compile_count
    from configs import camnet

    mode, accum = sys.argv[1], int(sys.argv[2])
    config = camnet.get_config("quick")
    config.model.kwargs.widths = (8, 16)
    config.model.head.hidden = (16, 8)
    config.model.head.dropout = (0.0, 0.0)  # dropout masks legitimately differ between layouts
    config.grad_accum = accum
    config.optim.learning_rate = 1e-2
    dp = DataParallel(mode)
    model = models.create(config.model, 4, bn_axis_name=bn_axis_name(mode), seed=0)
    tx = optim.make_optimizer(config.optim, 10, 100)
    model_def, state = steps.init_state(model, tx, "tf", 0)
    state = dp.put_state(state)
    step = dp.train_step(functools.partial(steps.train_step, model_def=model_def, tx=tx, config=config))
    rng = np.random.default_rng(0)
    losses, compiles = [], []
    for i in range(4):
        batch = {
            "image": rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
            "label": rng.integers(0, 4, 16).astype(np.int32),
            "is_manipulated": (rng.random(16) < 0.5).astype(np.float32),
            "manipulation": rng.integers(0, 9, 16).astype(np.int32),
        }
        state, metrics = step(state, dp.put_batch(batch))
        losses.append(dp.fetch_metrics(metrics)["train/loss"])
        compiles.append(compile_count())
    host = dp.get_state(state)
    stats = float(sum(np.abs(x).sum() for x in jax.tree.leaves(host.model_state)))
    print(json.dumps({"devices": dp.num_devices, "losses": losses, "compiles": compiles, "bn_stats": stats}))
    """
)


def run(mode, accum=1, devices=8):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(accum)], env=env, capture_output=True, text=True, timeout=300,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_pmap_and_sharded_agree_on_8_devices():
    sharded, pmapped = run("sharded"), run("pmap")
    assert sharded["devices"] == pmapped["devices"] == 8
    # Global BatchNorm statistics in both layouts -> the same loss curve and running stats.
    assert sharded["losses"] == pytest.approx(pmapped["losses"], rel=2e-4)
    assert sharded["bn_stats"] == pytest.approx(pmapped["bn_stats"], rel=2e-4)
    assert sharded["losses"][-1] < sharded["losses"][0]
    for r in (sharded, pmapped):
        assert r["compiles"][1] == r["compiles"][-1], f"recompiled after the first step: {r['compiles']}"


@pytest.mark.slow
def test_single_device_matches_8_devices_and_grad_accum():
    one, eight = run("sharded", devices=1), run("sharded")
    assert one["losses"] == pytest.approx(eight["losses"], rel=2e-4)
    accum = run("sharded", accum=2, devices=2)
    # Micro-batches see half the batch each: BatchNorm statistics differ, so the losses are
    # close but not equal; the first step's parameters are the same, so its loss is too.
    assert accum["losses"][0] == pytest.approx(one["losses"][0], rel=0.05)
    assert accum["compiles"][1] == accum["compiles"][-1]
