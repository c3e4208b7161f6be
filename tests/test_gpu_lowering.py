"""Every GPU program lowers for CUDA on this CPU-only machine (`jax.export`, abstract shapes).

The real train step of every registered model at the GPU workload (patch 512, bf16 compute,
batch 64, `conv_impl` and `depthwise_impl` resolved as on a GPU) under `sharded` on 8 devices; for ResNet50
and MobileNet (a dense and a depthwise family) the train and the D4 TTA steps under `sharded`
on 8 and 1 devices and `pmap` on 8. Nothing is compiled: each program is traced and emitted as
StableHLO for the CUDA platform, which is where a CPU-only lowering, a host callback or a dtype
surprise shows before the first GPU run.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import jax, jax.numpy as jnp
    from jax import export
    from camjax import assembly, tta
    from camjax.defaults import get_config
    from camjax.models import BACKBONES, default_config
    from camjax.parallel import DataParallel

    PATCH, BATCH = 512, 64

    def batch_shapes(lead, rows):
        return {
            "image": jax.ShapeDtypeStruct(lead + (rows, PATCH, PATCH, 3), jnp.uint8),
            "label": jax.ShapeDtypeStruct(lead + (rows,), jnp.int32),
            "is_manipulated": jax.ShapeDtypeStruct(lead + (rows,), jnp.float32),
            "manipulation": jax.ShapeDtypeStruct(lead + (rows,), jnp.int32),
        }

    def lower(name, mode, devices, programs):
        config = get_config()
        config.model = default_config(name)
        config.model.kwargs.conv_impl = "conv"  # what 'auto' picks on a GPU
        if name in ("mobilenet", "mobilenet_v2"):
            config.model.kwargs.depthwise_impl = "conv"
        config.dtype, config.batch_size, config.parallel = "bfloat16", BATCH, mode
        dp = DataParallel(mode, devices=jax.devices()[:devices])
        built = assembly.build_abstract(config.model, 10, dp, dtype=config.dtype, optim_config=config.optim)
        lead = (devices,) if mode == "pmap" else ()
        rows = BATCH // devices if mode == "pmap" else BATCH
        state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(lead + x.shape, x.dtype), built.host_state)
        train = built.train_step(config)
        predict = built.tta_predict(tta.views("d4"))
        out = {}
        tta_batch = {k: v for k, v in batch_shapes(lead, rows).items() if k in ("image", "is_manipulated")}
        for what, fn, batch in (("train", train, batch_shapes(lead, rows)), ("tta", predict, tta_batch)):
            if what not in programs:
                continue
            fn = fn if mode == "sharded" else jax.jit(fn)  # pmap lowers for another platform inside jit
            start = time.perf_counter()
            exported = export.export(fn, platforms=["cuda"])(state, batch)
            text = exported.mlir_module()
            out[what] = dict(
                seconds=round(time.perf_counter() - start, 1), platforms=list(exported.platforms),
                devices=exported.nr_devices, callbacks=text.count("callback"), bf16_convolutions=text.count(
                    "stablehlo.convolution") and text.count("bf16>") > 0, convolutions=text.count("stablehlo.convolution"),
                outputs=[str(o.dtype) for o in exported.out_avals][:3],
            )
        return out

    # Every family's train step (its forward is the TTA step's too); both steps in every layout
    # for a dense and a depthwise family.
    plan = [(name, "sharded", 8, ("train",)) for name in sorted(BACKBONES) if name not in ("resnet50", "mobilenet")]
    plan += [(name, mode, devices, ("train", "tta")) for name in ("resnet50", "mobilenet")
             for mode, devices in (("sharded", 8), ("pmap", 8), ("sharded", 1))]
    for name, mode, devices, programs in plan:
        print(json.dumps({"model": name, "mode": mode, "devices": devices, **lower(name, mode, devices, programs)}),
              flush=True)
    """
)


@pytest.mark.slow  # traces every family at 512 px: a few minutes on 2 cores
def test_train_and_tta_steps_lower_for_cuda():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert out.returncode == 0, out.stderr[-4000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    from camjax.models import BACKBONES

    assert {r["model"] for r in rows if r["mode"] == "sharded" and r["devices"] == 8} == set(BACKBONES)
    assert {(r["mode"], r["devices"]) for r in rows if r["model"] == "resnet50"} == {
        ("sharded", 8),
        ("pmap", 8),
        ("sharded", 1),
    }
    assert all("tta" in r for r in rows if r["model"] in ("resnet50", "mobilenet"))
    for r in rows:
        for what in ("train", "tta"):
            if what not in r:
                continue
            program = r[what]
            where = f"{r['model']} {r['mode']} x{r['devices']} {what}"
            assert program["platforms"] == ["cuda"], where
            assert program["devices"] == r["devices"], where
            assert program["callbacks"] == 0, f"{where}: a host callback in a device program"
            assert program["convolutions"] > 0 and program["bf16_convolutions"], f"{where}: no bf16 convolution"
