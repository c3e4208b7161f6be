"""Device throughput of the train step (or inference, or D4 TTA) on device-resident batches.

    python benchmarks/train_throughput.py --model resnet50 --patch 512 --batch 64,128 \
        --dtype bfloat16 --parallel sharded,pmap [--mode train|inference|tta]

No input pipeline: one synthetic batch is placed on the devices once, so this is the ceiling
the data pipeline has to feed. The step is built exactly as camjax/trainer.py builds it. Each
measurement is the median of `--steps` timed calls after `--warmup` calls, each call waited
for with `block_until_ready`. FLOPs come from XLA's cost analysis of the compiled step; MFU
divides the achieved FLOP rate by the chip's dense peak (common.PEAK_TFLOPS, or
--peak_tflops), null where the peak is unknown (CPUs).
"""

from __future__ import annotations

import argparse
import itertools
import time

import common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50", help="registry name (python -m camjax.models lists them)")
    p.add_argument("--model_kwargs", default="", help="backbone kwargs as JSON, e.g. '{\"alpha\": 0.25}'")
    p.add_argument("--config", default="", help="take the model section from configs/<x>.py[:preset]")
    p.add_argument("--patch", type=int, default=512)
    p.add_argument("--batch", default="32", help="global batch size(s), comma-separated")
    p.add_argument("--steps", type=int, default=20, help="timed calls per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (the first compiles)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--parallel", default="sharded", help="sharded and/or pmap, comma-separated")
    p.add_argument("--mode", default="train", help="train, inference and/or tta, comma-separated")
    p.add_argument("--tta_views", default="d4", help="views for --mode tta: flips | rot90 | d4")
    p.add_argument("--peak_tflops", type=float, default=0.0, help="per-chip peak for MFU where the table has none")
    p.add_argument("--compilation_cache", default="", help="persistent XLA cache dir (off by default)")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be >= 1 (the first call compiles)")
    for mode in common.csv_strs(args.mode):
        if mode not in ("train", "inference", "tta"):
            p.error(f"--mode {mode!r}: expected train, inference or tta")
    return args


def lowered_flops(jitted, *args) -> float | None:
    """XLA's flop count of the lowered (not compiled) computation: no compilation needed."""
    cost = jitted.lower(*args).cost_analysis()
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def measure(args, mc, *, mode: str, batch: int, parallel: str) -> dict:
    import jax

    from camjax import tta
    from camjax.parallel import compile_count

    config = common.train_config(mc, dtype=args.dtype, batch=batch, parallel=parallel)
    setup = common.TrainSetup(config)
    host = common.synthetic_batch(setup.local_batch, args.patch)
    dev_batch = setup.put_batch(host)
    views = tta.views(args.tta_views) if mode == "tta" else (0,)
    holder = {"state": setup.state}

    if mode == "train":
        fn = setup.train_step

        def call():
            holder["state"], metrics = fn(holder["state"], dev_batch)
            jax.block_until_ready(metrics)
    else:
        fn = setup.eval_step if mode == "inference" else setup.tta_step(views)

        def call():
            jax.block_until_ready(fn(holder["state"], dev_batch))

    t0 = time.perf_counter()
    call()
    first_call_s = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
        call()
    compiles_before = compile_count()
    times = common.time_calls(call, args.steps)
    compiles_after_warmup = compile_count() - compiles_before

    step_s = common.median(times)
    images_per_sec = batch / step_s
    flops = common.compiled_flops(fn, holder["state"], dev_batch)
    per_device = setup.per_device_batch
    flops_per_image = flops / per_device if flops else None
    forward = None
    if mode == "train":
        forward = lowered_flops(setup.eval_step, holder["state"], dev_batch)
        lowered_batch = per_device if parallel == "pmap" else batch  # jit lowers the global program
        forward = forward / lowered_batch if forward else None
    devices = setup.dp.num_devices
    achieved = images_per_sec * flops_per_image / devices / 1e12 if flops_per_image else None
    peak = common.peak_tflops(jax.devices()[0].device_kind, args.dtype, args.peak_tflops)
    rec = common.record(
        "train_throughput",
        mode=mode,
        model=mc.name,
        model_kwargs=mc.kwargs.to_dict(),
        highpass=mc.get("highpass", "none"),
        config=args.config or None,
        patch=args.patch,
        batch=batch,
        dtype=args.dtype,
        parallel=parallel,
        num_devices=devices,
        steps=args.steps,
        warmup=args.warmup,
        images_per_sec=common.rounded(images_per_sec, 2),
        step_ms_median=common.rounded(step_s * 1e3, 2),
        step_ms_min=common.rounded(min(times) * 1e3, 2),
        first_call_s=common.rounded(first_call_s, 2),
        gflops_per_image=common.rounded(flops_per_image / 1e9 if flops_per_image else None, 3),
        forward_gflops_per_image=common.rounded(forward / 1e9 if forward else None, 3),
        tflops_per_sec_per_device=common.rounded(achieved, 4),
        peak_tflops=peak,
        mfu=common.rounded(achieved / peak, 4) if (achieved and peak) else None,
        peak_rss_mb=common.peak_rss_mb(),
        compiles_after_warmup=compiles_after_warmup,
    )
    if mode == "tta":
        rec.update(views=len(views), view_images_per_sec=common.rounded(images_per_sec * len(views), 2))
    return rec


def main(argv=None) -> None:
    args = parse_args(argv)
    from camjax.assembly import enable_compilation_cache
    from camjax.parallel import initialize

    initialize()  # under srun / a JobSet / JAX_* variables: one process of a multi-host job
    enable_compilation_cache(args.compilation_cache)
    mc = common.model_config(args.model, args.model_kwargs, args.config)
    combos = itertools.product(common.csv_strs(args.mode), common.csv_ints(args.batch), common.csv_strs(args.parallel))
    for mode, batch, parallel in combos:
        common.emit(measure(args, mc, mode=mode, batch=batch, parallel=parallel))


if __name__ == "__main__":
    main()
